"""The ``[daemon]`` defaults have one home, the fields of ``DaemonSettings``: the key table
holds only parsers, and docs/reference.md states the same defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pandaserver.config.daemon import (
    COMMAND_CHECK_POLLED,
    COMMAND_CHECK_PUSHED,
    SECTION_KEYS,
    DaemonSettings,
    parse_daemon_section,
)

REPO = Path(__file__).resolve().parents[2]


def test_every_key_of_the_table_is_a_settings_field() -> None:
    fields = {f.name for f in dataclasses.fields(DaemonSettings)}
    assert set(SECTION_KEYS) - fields == set()


def test_a_key_not_given_and_a_bad_value_both_keep_the_fields_default() -> None:
    settings = parse_daemon_section(Path("x.cfg"), {"package": "p", "config": "{}",
                                                    "stop_grace": "soon", "n_proc": "3"})
    assert settings.stop_grace == DaemonSettings.stop_grace == 30.0
    assert [p.key for p in settings.fatal] == ["stop_grace"]
    assert settings.n_proc == 3 and settings.lease_ttl == DaemonSettings.lease_ttl


def test_docs_reference_states_the_fields_defaults() -> None:
    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    section = text.split("## `[daemon]`", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(r"^\| `(\w+)` \| `?([\w.]+)`? \|", section, re.MULTILINE))
    checked = 0
    for field in dataclasses.fields(DaemonSettings):
        if field.name in SECTION_KEYS and field.name in documented \
                and isinstance(field.default, bool | int | float):
            shown = documented[field.name]
            value = shown == "True" if isinstance(field.default, bool) else float(shown)
            assert value == field.default, (field.name, shown, field.default)
            checked += 1
    # command_interval's default is by backend: its row names both, pushed first
    row = re.search(r"^\| `command_interval` \| ([^|]*) \|", section, re.MULTILINE)
    assert row is not None and DaemonSettings.command_interval is None
    assert re.findall(r"\d+(?:\.\d+)?", row.group(1))[:2] == [
        f"{COMMAND_CHECK_PUSHED:g}", f"{COMMAND_CHECK_POLLED:g}"], row.group(1)
    checked += 1
    assert checked >= 12  # every numeric and boolean key of the table


def test_command_interval_is_the_key_when_set_else_by_backend() -> None:
    assert DaemonSettings(path="x").command_check(pushed=True) == COMMAND_CHECK_PUSHED
    assert DaemonSettings(path="x").command_check(pushed=False) == COMMAND_CHECK_POLLED
    settings = parse_daemon_section(Path("x.cfg"), {"package": "p", "config": "{}",
                                                    "command_interval": "2"})
    assert settings.command_check(pushed=True) == settings.command_check(pushed=False) == 2.0

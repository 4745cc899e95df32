"""Every bad input of the [daemon] section gets an error naming file, script, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from pandaserver.config import ConfigError, load_config


def write(tmp_path: Path, config: str, **keys: str) -> Path:
    lines = ["[daemon]", "enable = True", "package = testscripts"]
    lines += [f"{k} = {v}" for k, v in keys.items()]
    lines.append("config = " + config.strip().replace("\n", "\n    "))
    path = tmp_path / "panda_server.cfg"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def problems(tmp_path: Path, config: str, **keys: str) -> list[str]:
    return [str(p) for p in load_config(str(write(tmp_path, config, **keys))).daemon.problems]


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, '{"a": {"period": 60}}'))).daemon
    spec = settings.scripts["a"]
    assert (spec.module, spec.period, spec.timeout, spec.sync, spec.loop, spec.arguments,
            spec.enable) == ("a", 60, 180, False, False, (), True)
    assert settings.n_proc == 1 and settings.proc_lifetime == 28800 and settings.stop_grace == 30
    long = load_config(str(write(tmp_path, '{"b": {"period": 7200}}'))).daemon.scripts["b"]
    assert long.timeout == 7200 + 3600


@pytest.mark.parametrize(("entry", "key", "fragment"), [
    ('{"enable": 0, "period": 5}', "enable", "must be true or false, got a number: 0"),
    ('{"period": true}', "period", "must be a number of seconds, got a boolean: true"),
    ('{"period": "60"}', "period", 'must be a number of seconds, got a string: "60"'),
    ('{"period": 60, "arguments": "x"}', "arguments",
     'must be a list of strings or numbers, got a string: "x"'),
    ('{"period": 60, "arguments": [null]}', "arguments", "item 0 must be a string or a number"),
    ('{"period": 0}', "period", "must be positive, got: 0"),
    ('{"period": -5}', "period", "must be positive, got: -5"),
    ('{"timeout": 5}', "period", "is required"),
    ('{"period": 60, "timeout": 0}', "timeout", "must be positive, got: 0"),
    ('{"period": 60, "sync": "yes"}', "sync", 'must be true or false, got a string: "yes"'),
    ('{"period": 60, "module": "a-b"}', "module", "must be a Python module name"),
    ('{"period": 60, "perod": 5}', "perod", 'unknown key (value 5) (did you mean "period"?)'),
    ('{"period": 60, "zzz": 1}', "zzz", "allowed keys: arguments, cron, enable, loop"),
])
def test_bad_script_entries(tmp_path: Path, entry: str, key: str, fragment: str) -> None:
    found = problems(tmp_path, '{"s": ' + entry + ', "good": {"period": 1}}')
    path = tmp_path / "panda_server.cfg"
    assert len(found) == 1, found
    assert found[0].startswith(f"{path} [daemon] config script 's' key '{key}': ")
    assert fragment in found[0]
    assert list(load_config(str(path)).daemon.scripts) == ["good"]


def test_entry_must_be_an_object(tmp_path: Path) -> None:
    found = problems(tmp_path, '{"s": 60}')
    assert "config script 's': entry must be a JSON object of settings, got a number: 60" in found[0]


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n"a": {"period": 60},\n"b": {"period": 60,}\n}')
    (problem,) = load_config(str(path)).daemon.problems
    text = str(problem)
    assert "invalid JSON at line 3 column 20 of the value" in text
    assert "file line 6" in text and '"b": {"period": 60,}' in text


def test_duplicate_script_names_are_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, '{"a": {"period": 1}, "a": {"period": 2}}')
    assert "names script 'a' twice" in found[0]


def test_section_level_problems(tmp_path: Path) -> None:
    path = write(tmp_path, '{"a": {"period": 1}}', n_proc="0", proc_lifetime="-1",
                 n_porc="3", enable_x="1")
    settings = load_config(str(path)).daemon
    text = "\n".join(str(p) for p in settings.problems)
    assert "key 'n_proc': must be at least 1, got: 0" in text
    assert "key 'proc_lifetime': must be positive" in text
    assert "key 'n_porc': unknown key" in text and 'did you mean "n_proc"' in text
    assert {p.key for p in settings.fatal} == {"n_proc", "proc_lifetime"}


def test_missing_package_is_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.cfg"
    path.write_text('[daemon]\nenable = True\nconfig = {"a": {"period": 1}}\n')
    settings = load_config(str(path)).daemon
    assert [p.key for p in settings.fatal] == ["package"]


def test_bad_enable_value(tmp_path: Path) -> None:
    path = tmp_path / "c.cfg"
    path.write_text("[daemon]\nenable = maybe\npackage = x\nconfig = {}\n")
    settings = load_config(str(path)).daemon
    assert any("must be True or False, got: 'maybe'" in str(p) for p in settings.fatal)


def test_no_daemon_section(tmp_path: Path) -> None:
    path = tmp_path / "c.cfg"
    path.write_text("[server]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"has no \[daemon\] section"):
        load_config(str(path))


def test_unparsable_file(tmp_path: Path) -> None:
    path = tmp_path / "c.cfg"
    path.write_text("no section header\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(str(path))


def test_unknown_key_never_shows_a_password(tmp_path: Path) -> None:
    found = problems(tmp_path, '{"a": {"period": 1}}',
                     db_ulr="postgresql://panda:s3cret@db/panda", dbpassword="s3cret")
    text = "\n".join(found)
    assert "s3cret" not in text
    assert "key 'db_ulr': unknown key (value 'postgresql://panda:***@db/panda' (secrets" \
        " hidden))" in text and 'did you mean "db_url"' in text
    assert "key 'dbpassword': unknown key (value hidden: its name suggests a secret)" in text


@pytest.mark.parametrize(("value", "expected", "fragment"), [
    (None, 0, None),  # absent: no row bound
    ("0", 0, None),
    ("100", 100, None),
    ("250000", 250000, None),
    ("99", None, "key 'history_retention_rows': must be 0 (no bound) or 100 to 100000000 rows"
                 " per script, got: 99"),
    ("-5", None, "must be 0 (no bound) or 100 to 100000000 rows per script, got: -5"),
    ("100000001", None, "got: 100000001"),
    ("1e5", None, "must be a whole number of rows per script: 0 (no bound) or 100 to"
                  " 100000000, got: '1e5'"),
])
def test_history_retention_rows(tmp_path: Path, value: str | None, expected: int | None,
                                fragment: str | None) -> None:
    keys = {} if value is None else {"history_retention_rows": value}
    settings = load_config(str(write(tmp_path, '{"a": {"period": 60}}', **keys))).daemon
    found = [str(p) for p in settings.problems]
    if fragment is None:
        assert found == [] and settings.history_retention_rows == expected
    else:
        assert any(fragment in p for p in found), found

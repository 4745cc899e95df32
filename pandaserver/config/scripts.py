"""Per-script entries of the ``config`` JSON: ``DaemonSpec`` and its validation."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pandaserver.config.cronspec import CronError, CronSchedule
from pandaserver.config.cronspec import parse as parse_cron
from pandaserver.config.problems import did_you_mean, shown_json, shown_seconds
from pandaserver.config.secrets import is_secret_name, redact

Argument = str | int | float

MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class DaemonSpec:
    """One script as it will run, defaults filled in.

    A script runs on a ``period`` or on a ``cron`` schedule. For a cron script ``period``
    is the shortest interval between two of its firings: what a period stands for wherever
    one is only a measure (the default timeout, the late warning's threshold, the grid's
    tolerance, the fleet's fallback steps); its due times come from ``cron``.
    """

    name: str
    module: str
    period: float
    timeout: float
    sync: bool = False
    loop: bool = False
    arguments: tuple[Argument, ...] = ()
    enable: bool = True
    cron: CronSchedule | None = None

    @property
    def schedule_text(self) -> str:
        """The schedule for humans: ``every 60 s`` or ``cron 0 2 * * * (Europe/Zurich)``."""
        if self.cron is not None:
            return self.cron.describe()
        return f"every {shown_seconds(self.period)}"

    @property
    def argv(self) -> tuple[str | int | float, ...]:
        """The ``argv`` handed to ``main()``: the script name, then its arguments."""
        return (self.name, *self.arguments)

    def as_dict(self) -> dict[str, Any]:
        return {
            "enable": self.enable,
            "module": self.module,
            "period": self.period,
            "timeout": self.timeout,
            "sync": self.sync,
            "loop": self.loop,
            "arguments": list(self.arguments),
            # only for cron scripts, so a config on periods hashes exactly as before
            **({"cron": self.cron.expression, "timezone": self.cron.zone}
               if self.cron is not None else {}),
        }


def default_timeout(period: float) -> float:
    """Three periods, at most one more hour (a cron script: its shortest interval)."""
    return min(period * 3, period + 3600, TIMEOUT_MAX)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _shown(value: object) -> str:
    return redact(json.dumps(value))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_bool(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    return f"must be true or false, got {_kind(value)}: {_shown(value)}"


# Bounds of period and timeout: below the minimum a script would be killed and respawned in
# a loop (or its timeout race its own report); above the maximum its next due time is not
# representable in every supported database (and a typo like 1e12 is caught).
PERIOD_MIN = 0.1
PERIOD_MAX = 365 * 86400.0  # one year
TIMEOUT_MIN = 0.1
TIMEOUT_MAX = 366 * 86400.0  # one year and a day: the default timeout of the longest period


def _seconds_check(low: float, high: float) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not _is_number(value):
            return f"must be a number of seconds, got {_kind(value)}: {_shown(value)}"
        assert isinstance(value, int | float)
        if value != value or value in (float("inf"), float("-inf")):
            return f"must be a finite number of seconds, got: {_shown(value)}"
        if value <= 0:
            return f"must be positive, got: {_shown(value)}"
        if not low <= value <= high:
            return f"must be between {shown_seconds(low)} and {shown_seconds(high)}, got: {_shown(value)}"
        return None

    return check


def _check_module(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a module name (a string), got {_kind(value)}: {_shown(value)}"
    if not MODULE_RE.match(value):
        return f"must be a Python module name like 'copyArchive', got: {_shown(value)}"
    return None


def _check_arguments(value: object) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of strings or numbers, got {_kind(value)}: {_shown(value)}"
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return (
                f"item {index} must be a string or a number, got {_kind(item)}: {_shown(item)}"
            )
    return None


def _check_cron(value: object) -> str | None:
    if not isinstance(value, str):
        return (f"must be a cron expression (a string like '0 2 * * *'), got {_kind(value)}:"
                f" {_shown(value)}")
    try:
        parse_cron(value)
    except CronError as exc:
        return str(exc)
    return None


def _check_zone(value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be an IANA time zone name (a string), got {_kind(value)}: {_shown(value)}"
    try:
        parse_cron("@daily", value)
    except CronError as exc:
        return str(exc)
    return None


MAX_NAME = 128

SCRIPT_KEYS: dict[str, Callable[[object], str | None]] = {
    "enable": _check_bool,
    "period": _seconds_check(PERIOD_MIN, PERIOD_MAX),
    "cron": _check_cron,
    "timezone": _check_zone,
    "timeout": _seconds_check(TIMEOUT_MIN, TIMEOUT_MAX),
    "sync": _check_bool,
    "loop": _check_bool,
    "module": _check_module,
    "arguments": _check_arguments,
}


def parse_script(name: str, entry: object) -> tuple[DaemonSpec | None, list[tuple[str | None, str]]]:
    """Validate one entry. Returns the spec (None when unusable) and (key, message) problems."""
    problems: list[tuple[str | None, str]] = []
    if not isinstance(entry, dict):
        problems.append(
            (None, f"entry must be a JSON object of settings, got {_kind(entry)}: {_shown(entry)}")
        )
        return None, problems
    if not name.strip():
        problems.append((None, "script name must not be empty"))
    elif len(name) > MAX_NAME:
        problems.append((None, f"script name must have at most {MAX_NAME} characters"
                               f" (the history and lease tables' limit), got {len(name)}"))
    for key, value in entry.items():
        check = SCRIPT_KEYS.get(key)
        if check is None:
            allowed = ", ".join(sorted(SCRIPT_KEYS))
            shown = ("hidden: its name suggests a secret" if is_secret_name(key)
                     else shown_json(value))
            problems.append(
                (
                    key,
                    f"unknown key (value {shown}){did_you_mean(key, SCRIPT_KEYS)};"
                    f" allowed keys: {allowed}",
                )
            )
            continue
        message = check(value)
        if message is not None:
            problems.append((key, message))
    if "period" in entry and "cron" in entry:
        problems.append(("cron", "and period are both set: a script runs on one schedule;"
                                 " keep period (seconds between runs) or cron (wall-clock"
                                 " times), not both"))
    elif "period" not in entry and "cron" not in entry:
        problems.append(("period", "is required (the number of seconds between runs), or"
                                   " cron (wall-clock times, like \"0 2 * * *\")"))
    if "timezone" in entry and "cron" not in entry:
        problems.append(("timezone", "applies to a cron schedule only: set cron, or drop"
                                     " timezone (a period does not depend on the clock)"))
    if problems:
        return None, problems
    cron = None
    if "cron" in entry:
        cron = parse_cron(entry["cron"], entry.get("timezone", "UTC"))
        period = min(cron.shortest_interval, PERIOD_MAX)  # a measure: see DaemonSpec
    else:
        period = float(entry["period"])
    module = entry.get("module", name)
    if "module" not in entry and (message := _check_module(name)) is not None:
        return None, [("module", f"defaults to the script name, which {message}")]
    spec = DaemonSpec(
        name=name,
        module=module,
        period=period,
        timeout=float(entry.get("timeout", default_timeout(period))),
        sync=bool(entry.get("sync", False)),
        loop=bool(entry.get("loop", False)),
        arguments=tuple(entry.get("arguments", [])),
        enable=bool(entry.get("enable", True)),
        cron=cron,
    )
    return spec, []

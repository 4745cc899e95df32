"""The ``[daemon]`` section: typed settings plus one ``DaemonSpec`` per script."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandaserver.config.files import expand_env, key_line_numbers
from pandaserver.config.problems import ConfigProblem, did_you_mean, shown_value
from pandaserver.config.scripts import DaemonSpec, parse_script

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be True or False, got: {text!r}")


def parse_positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got: {value}")
    return value


def parse_seconds(text: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, got: {text!r}") from None
    if value != value or value == float("inf"):
        raise ValueError(f"must be a finite number of seconds, got: {text!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be {'zero or ' if allow_zero else ''}positive, got: {text!r}")
    return value


# A lease must leave room for renewals (every third of it), a renewal that takes a while,
# and the SIGTERM -> SIGKILL escalation before it can expire: see pandaserver/daemons/fencing.py.
LEASE_TTL_MIN = 15.0
LEASE_TTL_MAX = 3600.0


def parse_lease_ttl(text: str) -> float:
    value = parse_seconds(text)
    if not LEASE_TTL_MIN <= value <= LEASE_TTL_MAX:
        raise ValueError(
            f"must be between {LEASE_TTL_MIN:g} and {LEASE_TTL_MAX:g} seconds, got: {text.strip()!r}"
            f" (below {LEASE_TTL_MIN:g} s there is no room for a renewal plus the 3-s kill"
            " escalation before the lease expires)")
    return value


def parse_str(text: str) -> str:
    return text.strip()


def parse_nonneg_seconds(text: str) -> float:
    return parse_seconds(text, allow_zero=True)


# key -> (parser, default); "config" and "package" are handled apart.
SECTION_KEYS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "enable": (parse_bool, False),
    "uname": (parse_str, ""),
    "gname": (parse_str, ""),
    "n_proc": (parse_positive_int, 1),
    "n_dbconn": (parse_positive_int, 1),
    "proc_lifetime": (parse_seconds, 28800.0),
    "stop_grace": (parse_nonneg_seconds, 30.0),
    "db_url": (parse_str, ""),
    "history_retention_days": (parse_seconds, 30.0),
    "lease_ttl": (parse_lease_ttl, 30.0),
    "lease_grace": (parse_nonneg_seconds, 0.0),  # no longer used: leases last lease_ttl
    "heartbeat_interval": (parse_seconds, 30.0),
}
ALL_KEYS = (*SECTION_KEYS, "package", "config")


@dataclass
class DaemonSettings:
    """The validated ``[daemon]`` section.

    ``scripts`` holds every valid entry (disabled ones too, with ``enable`` False);
    ``problems`` holds everything wrong. ``fatal`` problems stop the master from starting;
    per-script problems only drop that script.
    """

    path: str
    enable: bool = False
    uname: str = ""
    gname: str = ""
    package: str = ""
    n_proc: int = 1
    n_dbconn: int = 1
    proc_lifetime: float = 28800.0
    stop_grace: float = 30.0
    db_url: str = ""
    history_retention_days: float = 30.0
    lease_ttl: float = 30.0
    lease_grace: float = 0.0  # accepted for old configs, unused
    heartbeat_interval: float = 30.0
    scripts: dict[str, DaemonSpec] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    fatal: list[ConfigProblem] = field(default_factory=list)
    raw_config: str = ""

    def unusable(self) -> list[ConfigProblem]:
        """What keeps this config from starting a master or replacing a running one's: the
        fatal problems, and a ``config`` value that cannot be used at all (invalid JSON, not
        an object, missing, empty), which would run no script, or on reload remove every
        one. A problem of one script only drops that script."""
        whole = [problem for problem in self.problems
                 if problem.key == "config" and problem.script is None]
        return [*self.fatal, *(problem for problem in whole if problem not in self.fatal)]

    @property
    def enabled_scripts(self) -> list[DaemonSpec]:
        return [spec for spec in self.scripts.values() if spec.enable]

    def fingerprint(self) -> dict[str, Any]:
        """The effective settings as plain data (for hashing and display)."""
        return {
            "package": self.package,
            "n_proc": self.n_proc,
            "proc_lifetime": self.proc_lifetime,
            "stop_grace": self.stop_grace,
            "scripts": {name: spec.as_dict() for name, spec in sorted(self.scripts.items())},
        }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def parse_daemon_section(
    path: Path, section: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> DaemonSettings:
    """Validate the raw ``[daemon]`` section into settings and a list of problems."""
    settings = DaemonSettings(path=str(path))
    where = str(path)

    def fatal(key: str | None, message: str) -> None:
        problem = ConfigProblem(where, message, key=key)
        settings.fatal.append(problem)
        settings.problems.append(problem)

    values: dict[str, str] = {}
    for key, raw in section.items():
        try:
            values[key] = expand_env(raw, environ)
        except KeyError as exc:
            fatal(key, f"refers to environment variable ${exc.args[0]}, which is not set")
    for key in section:
        if key not in ALL_KEYS:
            settings.problems.append(
                ConfigProblem(
                    where,
                    f"unknown key (value {shown_value(key, section[key])})"
                    f"{did_you_mean(key, ALL_KEYS)};"
                    f" allowed keys: {', '.join(sorted(ALL_KEYS))}",
                    key=key,
                )
            )
    for key, (parser, default) in SECTION_KEYS.items():
        value = default
        if key in values:
            try:
                value = parser(values[key])
            except ValueError as exc:
                fatal(key, str(exc))
        setattr(settings, key, value)
    package = values.get("package", "").strip()
    if "package" not in section:
        fatal("package", "is required: the dotted name of the package of script modules")
    elif not package and "package" in values:
        fatal("package", "must not be empty")
    settings.package = package
    settings.raw_config = values.get("config", "")
    if "config" not in section:
        settings.problems.append(ConfigProblem(where, "is missing: no scripts will run", key="config"))
        return settings
    _parse_scripts(path, settings, settings.raw_config)
    return settings


def _parse_scripts(path: Path, settings: DaemonSettings, text: str) -> None:
    where = str(path)
    if not text.strip():
        settings.problems.append(ConfigProblem(where, "is empty: no scripts will run", key="config"))
        return
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        settings.problems.append(
            ConfigProblem(where, f"names script {dup.key!r} twice (or repeats a key inside it)",
                          key="config")
        )
        return
    except json.JSONDecodeError as exc:
        settings.problems.append(
            ConfigProblem(where, _json_error(path, text, exc), key="config")
        )
        return
    if not isinstance(data, dict):
        settings.problems.append(
            ConfigProblem(where, "must be a JSON object mapping script names to settings",
                          key="config")
        )
        return
    for name, entry in data.items():
        spec, problems = parse_script(name, entry)
        for key, message in problems:
            settings.problems.append(ConfigProblem(where, message, script=name, key=key))
        if spec is not None:
            settings.scripts[name] = spec


def _json_error(path: Path, text: str, exc: json.JSONDecodeError) -> str:
    """Name the line and column inside the value, and where that is in the file."""
    message = f"invalid JSON at line {exc.lineno} column {exc.colno} of the value: {exc.msg}"
    key_line = key_line_numbers(path, "daemon").get("config")
    if key_line is None:
        return message
    file_line = key_line + exc.lineno - 1
    try:
        raw = path.read_text(encoding="utf-8").splitlines()[file_line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return message
    column = exc.colno
    if exc.lineno > 1:
        column += len(raw) - len(raw.lstrip())
    else:
        column += raw.index("=") + 1 + (len(raw.split("=", 1)[1]) - len(raw.split("=", 1)[1].lstrip()))
    return f"{message} (file line {file_line}, column {column}: {raw.strip()!r})"

"""The ``[daemon]`` section: typed settings plus one ``DaemonSpec`` per script."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandaserver.config.files import expand_env, key_line_numbers
from pandaserver.config.problems import (
    ConfigProblem,
    did_you_mean,
    masked_json_line,
    shown_value,
)
from pandaserver.config.scripts import MODULE_RE, DaemonSpec, default_timeout, parse_script
from pandaserver.config.values import (
    bounded_int,
    bounded_seconds,
    parse_bool,
    parse_seconds,
    parse_str,
)

# A lease must leave room for renewals (every third of it), a renewal that takes a while,
# and the SIGTERM -> SIGKILL escalation before it can expire: see pandaserver/daemons/fleet/fencing.py.
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


def parse_retention_rows(text: str) -> int:
    """0 (no row bound) or a whole number of rows kept per script."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"must be a whole number of rows per script: 0 (no bound) or"
                         f" {RETENTION_ROWS_MIN} to {RETENTION_ROWS_MAX}, got: {text.strip()!r}"
                         ) from None
    if value != 0 and not RETENTION_ROWS_MIN <= value <= RETENTION_ROWS_MAX:
        raise ValueError(f"must be 0 (no bound) or {RETENTION_ROWS_MIN} to {RETENTION_ROWS_MAX}"
                         f" rows per script, got: {value}")
    return value


N_PROC_MAX = 256
N_PROC_PER_CPU = 4  # more workers than this per CPU is worth a warning
N_DBCONN_MAX = 100
PROC_LIFETIME_MIN = 1.0
PROC_LIFETIME_WARN = 60.0
PROC_LIFETIME_MAX = 365 * 86400.0
STOP_GRACE_MAX = 3600.0
HEARTBEAT_MIN = 1.0
HEARTBEAT_MAX = 3600.0
RETENTION_MIN_DAYS = 1.0
RETENTION_MAX_DAYS = 36500.0
RETENTION_ROWS_MIN = 100  # fewer would leave too little history to judge a script by
RETENTION_ROWS_MAX = 100_000_000
LEASE_GRACE_MAX = 86400.0
COMMAND_INTERVAL_MIN = 0.2
COMMAND_INTERVAL_MAX = 300.0
# command_interval when not set: where the database pushes the commands (PostgreSQL's
# LISTEN/NOTIFY) the read is only a safety net; elsewhere it is the poll, read in the same
# wake-up as the default heartbeat (docs/multi-server.md, "How fast a command acts")
COMMAND_CHECK_PUSHED = 60.0
COMMAND_CHECK_POLLED = 30.0
CRASH_BACKOFF_MIN = 1.0
CRASH_BACKOFF_MAX = 86400.0

# key -> the parser of its text; "config" and "package" are handled apart. The defaults
# live in one place, the fields of DaemonSettings below: a key not given keeps its field's.
SECTION_KEYS: dict[str, Callable[[str], Any]] = {
    "enable": parse_bool,
    "uname": parse_str,
    "gname": parse_str,
    "n_proc": bounded_int(1, N_PROC_MAX, " (each worker is a Python interpreter; a fleet"
                                         " shares its scripts over more servers instead)"),
    "n_dbconn": bounded_int(1, N_DBCONN_MAX),
    "proc_lifetime": bounded_seconds(PROC_LIFETIME_MIN, PROC_LIFETIME_MAX,
                                     why="; below it workers are replaced faster than they"
                                         " start, and no script runs"),
    "stop_grace": bounded_seconds(0.0, STOP_GRACE_MAX, allow_zero=True),
    "db_url": parse_str,
    "history_retention_days": bounded_seconds(RETENTION_MIN_DAYS, RETENTION_MAX_DAYS,
                                              unit="days"),
    "history_retention_rows": parse_retention_rows,
    "lease_ttl": parse_lease_ttl,
    "lease_grace": bounded_seconds(0.0, LEASE_GRACE_MAX, allow_zero=True),
    "heartbeat_interval": bounded_seconds(HEARTBEAT_MIN, HEARTBEAT_MAX),
    "command_interval": bounded_seconds(COMMAND_INTERVAL_MIN, COMMAND_INTERVAL_MAX),
    "crash_backoff_max": bounded_seconds(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX),
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
    history_retention_rows: int = 0  # newest runs kept per script (0: no bound), besides age
    lease_ttl: float = 30.0
    # no longer used (a lease lasts lease_ttl, renewed while its run lives): kept so old
    # configs load, with a warning
    lease_grace: float = 0.0
    heartbeat_interval: float = 30.0
    # how often each master reads the operators' commands (None: by backend, see
    # command_check)
    command_interval: float | None = None
    crash_backoff_max: float = 300.0  # the longest wait before a crash-looping script's retry
    scripts: dict[str, DaemonSpec] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    fatal: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    raw_config: str = ""
    # set by a reload: settings that changed but take effect only at the next start
    restart_needed: list[str] = field(default_factory=list)
    # set by the preflight: scripts whose module did not import there (script -> why); the
    # master holds them until a worker imports the module
    waiting_imports: dict[str, str] = field(default_factory=dict)

    def unusable(self) -> list[ConfigProblem]:
        """What keeps this config from starting a master or replacing a running one's: the
        fatal problems, and a ``config`` value that cannot be used at all (invalid JSON, not
        an object, missing, empty), which would run no script, or on reload remove every
        one. A problem of one script only drops that script."""
        whole = [problem for problem in self.problems
                 if problem.key == "config" and problem.script is None]
        return [*self.fatal, *(problem for problem in whole if problem not in self.fatal)]

    def command_check(self, pushed: bool) -> float:
        """Seconds between two reads of the operators' commands: the key when it is set,
        else ``COMMAND_CHECK_PUSHED`` where the database pushes them (``pushed``: a
        safety net) and ``COMMAND_CHECK_POLLED`` where it is the only way they arrive."""
        if self.command_interval is not None:
            return self.command_interval
        return COMMAND_CHECK_PUSHED if pushed else COMMAND_CHECK_POLLED

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
    path: Path, section: Mapping[str, str], environ: Mapping[str, str] | None = None,
    *, origins: Mapping[str, Path] | None = None, cpu_count: int | None = None,
) -> DaemonSettings:
    """Validate the raw ``[daemon]`` section into settings and a list of problems.

    ``origins`` names the file each key came from (several files may be merged)."""
    settings = DaemonSettings(path=str(path))
    known = origins or {}

    def where(key: str | None) -> str:
        return str(known.get(key, path)) if key is not None else str(path)

    def fatal(key: str | None, message: str) -> None:
        problem = ConfigProblem(where(key), message, key=key)
        settings.fatal.append(problem)
        settings.problems.append(problem)

    def warn(key: str | None, message: str) -> None:
        settings.warnings.append(ConfigProblem(where(key), message, key=key))

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
                    where(key),
                    f"unknown key (value {shown_value(key, section[key])})"
                    f"{did_you_mean(key, ALL_KEYS)};"
                    f" allowed keys: {', '.join(sorted(ALL_KEYS))}",
                    key=key,
                )
            )
    for key, parser in SECTION_KEYS.items():  # a key not given keeps its field's default
        if key in values:
            try:
                setattr(settings, key, parser(values[key]))
            except ValueError as exc:
                fatal(key, str(exc))
    _section_warnings(settings, values, warn, cpu_count)
    package = values.get("package", "").strip()
    if "package" not in section:
        fatal("package", "is required: the dotted name of the package of script modules")
    elif not package and "package" in values:
        fatal("package", "must not be empty")
    elif package and not MODULE_RE.match(package):
        fatal("package", f"must be a dotted Python package name like"
                         f" 'pandaserver.daemons.scripts', got: {package!r}")
    settings.package = package
    settings.raw_config = values.get("config", "")
    if "config" not in section:
        settings.problems.append(ConfigProblem(where("config"), "is missing: no scripts will run",
                                               key="config"))
        return settings
    _parse_scripts(Path(where("config")), settings, settings.raw_config)
    return settings


def _section_warnings(settings: DaemonSettings, values: Mapping[str, str],
                      warn: Callable[[str, str], None], cpu_count: int | None) -> None:
    """Values that work but are probably not meant."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if "n_proc" in values and settings.n_proc > cpus * N_PROC_PER_CPU:
        warn("n_proc", f"{settings.n_proc} workers on a host with {cpus} CPUs (more than"
                       f" {N_PROC_PER_CPU} per CPU): each is a Python interpreter; check this"
                       " is meant")
    if "proc_lifetime" in values and settings.proc_lifetime < PROC_LIFETIME_WARN:
        warn("proc_lifetime", f"workers are replaced every {settings.proc_lifetime:g} s; each"
                              " replacement starts a new interpreter (values under"
                              f" {PROC_LIFETIME_WARN:g} s are meant for tests)")
    if "lease_grace" in values:
        warn("lease_grace", "is no longer used: a sync lease lasts lease_ttl and is renewed"
                            " while its run lives; remove the key")


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
    if not data:
        settings.problems.append(
            ConfigProblem(where, "is an empty object ({}): no scripts will run; name at least"
                                 ' one script, as {"dummy_test": {"period": 60}}', key="config"))
        return
    for name, entry in data.items():
        spec, problems = parse_script(name, entry)
        for key, message in problems:
            settings.problems.append(ConfigProblem(where, message, script=name, key=key))
        if spec is not None:
            settings.scripts[name] = spec
            if spec.loop and spec.timeout <= spec.period:
                settings.warnings.append(ConfigProblem(
                    where, f"timeout {spec.timeout:g} s is not longer than the period"
                           f" {spec.period:g} s of this loop script: a loop runs up to its"
                           " period, so a run whose main() keeps returning a true value is"
                           " killed at its timeout every time; set timeout above the period"
                           " (or leave it out: the default is"
                           f" {default_timeout(spec.period):g} s)", script=name, key="timeout"))


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
    return f"{message} (file line {file_line}, column {column}: {masked_json_line(raw.strip())!r})"

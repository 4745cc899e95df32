"""Turn crontab jobs into ``config`` entries: the schedule, the sync rule, the JSON text.

A schedule that is a plain interval (firings evenly spaced, an hour apart or less) becomes
a ``period``; any other (a time of day, irregular firings, days of the week or month)
becomes a ``cron`` entry with the same expression, unless ``Options.cron`` is off
(``cron2json --periods``), which approximates it by a period as before. The period of a
cron schedule is the interval between consecutive firings over one whole calendar cycle
(``firings.py``), so that the answer never depends on today's date.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pandaserver.config.problems import shown_seconds
from pandaserver.config.scripts import PERIOD_MAX, PERIOD_MIN
from pandaserver.cron.firings import DAY, Schedule, analyse_schedule
from pandaserver.cron.parse import CronJob, Diagnostic, read_command

DEFAULT_MIN_SYNC_PERIOD = 60.0
DEFAULT_PACKAGE = "pandaserver.daemons.scripts"
MAX_N_PROC = 4
PLAIN_INTERVAL_MAX = 3600  # seconds: an even schedule this fine is a period, not a time of day
INDENT = "    "
_MODULE_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Options:
    """How to convert: the fleet size and the sync rule's overrides and threshold."""

    servers: int = 1
    sync: frozenset[str] = frozenset()
    no_sync: frozenset[str] = frozenset()
    min_sync_period: float = DEFAULT_MIN_SYNC_PERIOD
    module_map: Mapping[str, str] = field(default_factory=dict)
    cron: bool = False  # emit ``cron`` for what a period cannot express (the command's default)
    timezone: str | None = None  # the zone the crontab's times were in (None: UTC)


@dataclass(frozen=True)
class Script:
    """One converted entry of the ``config`` JSON, with where it came from."""

    name: str
    module: str
    period: float
    sync: bool
    arguments: tuple[str, ...]
    line: int
    schedule: str
    user: str | None = None
    cron: str | None = None  # the cron expression, when it is kept (then no period)
    timezone: str | None = None

    def entry(self) -> dict[str, object]:
        """The JSON entry: default-valued keys left out, in the order module, period (or
        cron and timezone), sync, arguments."""
        entry: dict[str, object] = {}
        if self.module != self.name:
            entry["module"] = self.module
        if self.cron is not None:
            entry["cron"] = self.cron
            if self.timezone is not None:
                entry["timezone"] = self.timezone
        else:
            entry["period"] = period_value(self.period)
        if self.sync:
            entry["sync"] = True
        if self.arguments:
            entry["arguments"] = list(self.arguments)
        return entry


@dataclass
class Conversion:
    scripts: list[Script] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(note.severity == "error" for note in self.diagnostics)

    @property
    def users(self) -> list[str]:
        """The crontab users the converted lines ran as, in order of first appearance."""
        return list(dict.fromkeys(s.user for s in self.scripts if s.user is not None))


def is_module_name(text: str) -> bool:
    """A (dotted) Python module name, as the config loader accepts it; keywords excluded."""
    return all(
        _MODULE_PART.match(part) is not None and not keyword.iskeyword(part)
        for part in text.split(".")
    )


def is_identifier(text: str) -> bool:
    """A script name that can be its own module name: one identifier, not a keyword."""
    return "." not in text and is_module_name(text)


def read_module_map(lines: Iterable[str]) -> tuple[dict[str, str], list[Diagnostic]]:
    """``name = module`` lines; ``#`` starts a comment; blank lines are skipped."""
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems: list[Diagnostic] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        name, equals, module = (part.strip() for part in text.partition("="))
        if not equals or not name or not module:
            message = f"expected 'name = module', got: {text!r}"
        elif not is_module_name(module):
            message = f"{module!r} is not a Python module name (like 'pilotStreaming')"
        elif name in mapping:
            message = f"maps {name!r} again (first on line {first_line[name]})"
        else:
            mapping[name] = module
            first_line[name] = number
            continue
        problems.append(Diagnostic(number, "error", message))
    return mapping, problems


def convert(jobs: Iterable[CronJob], options: Options) -> Conversion:
    """Convert every job; a bad job becomes an error diagnostic and the rest go on."""
    result = Conversion()
    notes = result.diagnostics
    by_name: dict[str, Script] = {}
    names_seen: set[str] = set()
    for job in jobs:
        try:
            schedule = analyse_schedule(job.schedule)
            command = read_command(job.command)
        except ValueError as exc:
            notes.append(Diagnostic(job.line, "error", str(exc)))
            continue
        notes.extend(Diagnostic(job.line, "warning", text) for text in command.warnings)
        names_seen.add(command.name)
        module = options.module_map.get(command.name, command.name)
        if command.name not in options.module_map and not is_identifier(command.name):
            notes.append(Diagnostic(job.line, "error", _bad_name(command.name)))
            continue
        keep_cron = options.cron and not plain_interval(schedule)
        if keep_cron:  # once per firing fleet-wide when sync: no server count correction
            sync = cron_sync_rule(command.name, min(schedule.intervals), options)
            period = schedule.period
        else:
            sync, period = sync_rule(command.name, schedule.period, options)
            out_of_bounds = _period_out_of_bounds(job.schedule_text, period, sync, options)
            if out_of_bounds is not None:
                notes.append(Diagnostic(job.line, "error", out_of_bounds))
                continue
        script = Script(command.name, module, period, sync, command.arguments, job.line,
                        job.schedule, job.user,
                        cron=job.schedule_text if keep_cron else None,
                        timezone=options.timezone if keep_cron else None)
        earlier = by_name.get(command.name)
        if earlier is not None:
            notes.append(_duplicate(script, earlier))
            continue
        if not schedule.regular and not keep_cron:
            notes.append(Diagnostic(job.line, "warning", _irregular(job.schedule_text, schedule)))
        users = result.users
        if job.user is not None and users and job.user not in users:
            notes.append(_other_user(job, users[0], result.scripts))
        by_name[command.name] = script
        result.scripts.append(script)
    notes.extend(_unused(options, names_seen))
    return result


def plain_interval(schedule: Schedule) -> bool:
    """Firings evenly spaced, at most ``PLAIN_INTERVAL_MAX`` apart: a period says it all.
    Anything else has a time of day, a weekday or a date a period would lose."""
    return schedule.regular and schedule.intervals[0] <= PLAIN_INTERVAL_MAX


def cron_sync_rule(name: str, shortest: float, options: Options) -> bool:
    """``sync`` for a script kept on its cron schedule: once per firing across the fleet
    (what staggered crontabs aimed at), unless named by ``--no-sync`` or its firings are
    closer than ``min_sync_period``. No division by the server count: a firing is a time,
    not a rate."""
    if name in options.sync:
        return True
    return name not in options.no_sync and shortest >= options.min_sync_period


def sync_rule(name: str, cron_period: float, options: Options) -> tuple[bool, float]:
    """(sync, period) for a script that each of the servers ran from cron.

    Each server ran it every ``cron_period``, so the fleet ran it ``servers`` times as
    often. Taking turns under the lock keeps that rate with period ``cron_period / servers``;
    below ``min_sync_period`` the lock is not worth it and every server keeps its own
    cron period. ``--sync`` and ``--no-sync`` override the threshold.
    """
    fleet_period = cron_period / options.servers
    if name in options.sync:
        return True, fleet_period
    if name in options.no_sync or fleet_period < options.min_sync_period:
        return False, cron_period
    return True, fleet_period


def _period_out_of_bounds(
    schedule_text: str, period: float, sync: bool, options: Options
) -> str | None:
    """Why the period, as printed, is one the config refuses; None when it is accepted."""
    printed = period_value(period)
    if PERIOD_MIN <= printed <= PERIOD_MAX:
        return None
    shared = f" shared by {options.servers} servers" if sync and options.servers > 1 else ""
    if printed > PERIOD_MAX:
        return (
            f"the schedule {schedule_text!r} gives a period of {format_duration(period)}"
            f" ({printed} s){shared}, longer than the daemon's longest,"
            f" {shown_seconds(PERIOD_MAX)}: not converted; keep this line in cron, or give"
            " the script a shorter schedule"
        )
    return (
        f"the schedule {schedule_text!r} gives a period of {printed} s{shared}, shorter than"
        f" the daemon's shortest, {shown_seconds(PERIOD_MIN)}: not converted; leave it"
        " out of --sync, or give it a longer schedule"
    )


def _bad_name(name: str) -> str:
    return (
        f"the script name {name!r} is not a Python identifier: map it to a module"
        f" with a '{name} = module' line in --module-map"
    )


def _irregular(schedule_text: str, schedule: Schedule) -> str:
    shown = [format_duration(seconds) for seconds in schedule.intervals[:6]]
    if len(schedule.intervals) > 6:
        shown.append(f"and {len(schedule.intervals) - 6} more")
    return (
        f"irregular schedule {schedule_text!r}: the intervals between runs are"
        f" {', '.join(shown)}; using their average, {format_duration(schedule.period)}"
        f" ({period_value(schedule.period)} s)"
    )


def _duplicate(script: Script, earlier: Script) -> Diagnostic:
    if (script.entry(), script.schedule) == (earlier.entry(), earlier.schedule):
        return Diagnostic(
            script.line, "warning", f"repeats line {earlier.line} ({script.name!r}); converted once"
        )
    return Diagnostic(
        script.line,
        "error",
        f"the script name {script.name!r} is already taken by line {earlier.line}, with a"
        f" different schedule or arguments; only line {earlier.line} is converted: merge the"
        " schedules, or add this one by hand under another name with"
        f' "module": "{script.module}"',
    )


def _other_user(job: CronJob, first_user: str, scripts: Sequence[Script]) -> Diagnostic:
    first_line = next(s.line for s in scripts if s.user == first_user)
    return Diagnostic(
        job.line,
        "warning",
        f"runs as {job.user!r}, but line {first_line} runs as {first_user!r}: the daemon runs"
        " every script as one user",
    )


def _unused(options: Options, names_seen: set[str]) -> list[Diagnostic]:
    notes: list[Diagnostic] = []
    for option, names in (("--sync", options.sync), ("--no-sync", options.no_sync)):
        notes.extend(
            Diagnostic(None, "warning", f"{option} {name} matches no crontab line")
            for name in sorted(names - names_seen)
        )
    notes.extend(
        Diagnostic(None, "warning", f"the module map entry {name!r} matches no crontab line")
        for name in sorted(set(options.module_map) - names_seen)
    )
    return notes


def period_value(seconds: float) -> int | float:
    """A period as printed: rounded to 0.1 s, and an int when whole."""
    rounded = round(seconds, 1) or seconds
    return int(rounded) if float(rounded).is_integer() else rounded


def format_duration(seconds: float) -> str:
    """``21600`` -> ``6h``; ``93784`` -> ``1d 2h 3m 4s``."""
    remaining = round(seconds)
    parts: list[str] = []
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    if remaining or not parts:
        parts.append(f"{remaining}s")
    return " ".join(parts)


def format_config(scripts: Sequence[Script]) -> str:
    """The ``config`` value: one line per script, every line after the first indented so
    that it can be pasted under ``config = `` in the INI file."""
    if not scripts:
        return "{}"
    lines = [
        f"{INDENT * 2}{json.dumps(s.name)}: {json.dumps(s.entry(), ensure_ascii=False)}"
        for s in scripts
    ]
    return "{\n" + ",\n".join(lines) + f"\n{INDENT}}}"


def format_section(scripts: Sequence[Script], users: Sequence[str] = ()) -> str:
    """A whole ``[daemon]`` section around ``format_config``."""
    lines = [
        "[daemon]",
        "enable = True",
        f"package = {DEFAULT_PACKAGE}",
        f"n_proc = {max(1, min(len(scripts), MAX_N_PROC))}",
    ]
    if users:
        lines.append(
            f"# the crontab lines ran as {', '.join(users)}: when the daemon starts as root,"
            " set uname (and gname) to run the scripts as that user"
        )
    lines.append(f"config = {format_config(scripts)}")
    return "\n".join(lines)

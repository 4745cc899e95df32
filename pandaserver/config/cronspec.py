"""A script's ``cron`` schedule: its wall-clock firings, computed purely.

A ``CronSchedule`` is a standard five-field cron expression (or an ``@daily``-style
shortcut) read in an IANA time zone (UTC by default). Its firings are UTC instants, given
as POSIX seconds; every method takes the instant it reasons about as an argument and never
reads a clock, so tests drive it with fixed datetimes.

The rules (docs/scheduling.md, "Cron schedules"):

- A firing is a local wall-clock time that matches the expression, in the schedule's zone.
- Daylight-saving gaps: a local time that does not exist that day (02:30 when clocks jump
  from 02:00 to 03:00) is no firing: it is skipped, not moved.
- Daylight-saving overlaps: a local time that happens twice (02:30 when clocks fall back
  from 03:00 to 02:00) fires once, at its first occurrence; the repeated hour fires nothing.
- ``next_after(t)`` is the first firing strictly after ``t``; ``latest_at(t)`` the last one
  at or before ``t``. A master asks for the firing after the one it last ran, so a clock
  stepped back over a firing never runs that firing twice.

croniter is imported on first use only: commands that never compute a firing stay quick.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import pairwise
from typing import Any

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
DEFAULT_ZONE = "UTC"
# how far a search for the next (or previous) firing may go before the expression is
# judged never to fire: beyond 28 years the Gregorian calendar's weekdays repeat
SEARCH_YEARS = 29
# the shortest interval between two firings: over this many firing days from a fixed
# reference (a leap year's first day: weeks, month ends and Feb 29 all come round), and at
# most over SAMPLE_YEARS
SAMPLE_FIRINGS = 60
SAMPLE_YEARS = 8
REFERENCE = datetime(2000, 1, 1)  # noqa: DTZ001 - naive on purpose: a local wall time


class CronError(ValueError):
    """An expression or zone that cannot be used, with a message saying why."""


def _croniter() -> Any:
    from croniter import croniter

    return croniter


def zone_of(name: str) -> tzinfo:
    """The IANA zone ``name``, or CronError saying it is unknown."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise CronError(f"must be an IANA time zone name like 'Europe/Zurich', got: {name!r}")
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}: use an IANA name like 'Europe/Zurich'"
                        " or 'America/Chicago' (default UTC)") from None


def expand(expression: str) -> str:
    """The five fields of ``expression`` (a shortcut replaced), or CronError."""
    text = " ".join(expression.split())
    if text.startswith("@"):
        fields = MACROS.get(text.lower())
        if fields is None:
            raise CronError(f"unknown shortcut {text!r}: allowed are {', '.join(MACROS)}"
                            " (@reboot has no place in a daemon: every script runs when"
                            " it is due)")
        return fields
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(f"must have five fields (minute hour day-of-month month day-of-week)"
                        f" or be a shortcut like @daily, got {len(parts)} field(s): {expression!r}")
    croniter = _croniter()
    if not croniter.is_valid(text):
        raise CronError(f"is not a valid cron expression: {expression!r} (five fields: minute"
                        " 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6)")
    return text


@dataclass(frozen=True)
class CronSchedule:
    """``expression`` read in ``zone`` (an IANA name). Build it with ``parse``."""

    expression: str
    zone: str = DEFAULT_ZONE

    @functools.cached_property
    def fields(self) -> str:
        return expand(self.expression)

    @functools.cached_property
    def tz(self) -> tzinfo:
        return zone_of(self.zone)

    # ----- local wall time <-> UTC ----------------------------------------------------------
    def _utc(self, local: datetime) -> float | None:
        """The instant of the naive local time ``local``: None in a gap (it does not exist
        that day); the first occurrence when it happens twice."""
        aware = local.replace(tzinfo=self.tz, fold=0)
        instant = aware.astimezone(UTC)
        if instant.astimezone(self.tz).replace(tzinfo=None) != local:
            return None  # a daylight-saving gap
        return instant.timestamp()

    def _local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, tz=UTC).astimezone(self.tz).replace(tzinfo=None)

    # ----- firings --------------------------------------------------------------------------
    def next_after(self, t: float) -> float:
        """The first firing strictly after the instant ``t`` (POSIX seconds)."""
        croniter = _croniter()
        start = self._local(t)
        limit = start + timedelta(days=366 * SEARCH_YEARS)
        found = croniter(self.fields, start, max_years_between_matches=SEARCH_YEARS)
        while True:
            local = found.get_next(datetime)
            if local > limit:  # pragma: no cover - parse refuses expressions that never fire
                raise CronError(f"{self.expression!r} does not fire after {start}")
            instant = self._utc(local)
            if instant is not None and instant > t:
                return instant

    def latest_at(self, t: float) -> float | None:
        """The last firing at or before the instant ``t``; None when there is none within
        ``SEARCH_YEARS``."""
        croniter = _croniter()
        start = self._local(t).replace(microsecond=0) + timedelta(seconds=1)
        limit = start - timedelta(days=366 * SEARCH_YEARS)
        found = croniter(self.fields, start, max_years_between_matches=SEARCH_YEARS)
        try:
            while True:
                local = found.get_prev(datetime)
                if local < limit:
                    return None
                instant = self._utc(local)
                if instant is not None and instant <= t:
                    return instant
        except (ValueError, OverflowError):  # croniter found none within its search
            return None

    @functools.cached_property
    def shortest_interval(self) -> float:
        """Seconds between the two closest firings (local wall time, daylight saving
        aside; the firing days sampled from 2000-01-01): what a period is for a script on a
        period (its default timeout, the late warning's threshold, the grid's tolerance)."""
        return _shortest(self.fields)

    def describe(self) -> str:
        zone = "" if self.zone == DEFAULT_ZONE else f" ({self.zone})"
        return f"cron {self.expression}{zone}"


@functools.lru_cache(maxsize=1024)
def _shortest(fields: str) -> float:
    """The shortest interval between two firings of ``fields``: the times of a day come from
    the minute and hour fields alone; only the days that fire are iterated (at most
    ``SAMPLE_FIRINGS`` of them, over at most ``SAMPLE_YEARS``), so it costs milliseconds."""
    croniter = _croniter()
    expanded = croniter(fields, REFERENCE).expanded
    minutes = range(60) if expanded[0] == ["*"] else sorted(int(m) for m in expanded[0])
    hours = range(24) if expanded[1] == ["*"] else sorted(int(h) for h in expanded[1])
    times = sorted(h * 3600 + m * 60 for h in hours for m in minutes)
    within = min((b - a for a, b in pairwise(times)), default=math.inf)
    if all(values == ["*"] for values in expanded[2:5]):
        day_gap = 1
    else:
        days = croniter("0 0 " + " ".join(fields.split()[2:5]), REFERENCE - timedelta(seconds=1))
        limit = REFERENCE + timedelta(days=366 * SAMPLE_YEARS)
        previous = days.get_next(datetime)
        day_gap = 366 * SAMPLE_YEARS  # one firing day in SAMPLE_YEARS (Feb 29 on a Monday)
        for _ in range(SAMPLE_FIRINGS):
            day = days.get_next(datetime)
            if day > limit:
                break
            day_gap = min(day_gap, (day - previous).days)
            if day_gap == 1:  # the least there is
                break
            previous = day
    across = day_gap * 86400 - times[-1] + times[0]
    return float(min(within, across))


def parse(expression: object, zone: object = DEFAULT_ZONE) -> CronSchedule:
    """A usable schedule, or CronError naming what is wrong with the expression or zone."""
    if not isinstance(expression, str):
        raise CronError(f"must be a cron expression (a string like '0 2 * * *'), got: "
                        f"{expression!r}")
    if not isinstance(zone, str):
        raise CronError(f"must be an IANA time zone name (a string), got: {zone!r}")
    schedule = CronSchedule(" ".join(expression.split()), zone)
    schedule.tz  # noqa: B018 - validates the zone
    fields = schedule.fields  # validates the expression
    croniter = _croniter()
    try:
        croniter(fields, REFERENCE,
                 max_years_between_matches=SEARCH_YEARS).get_next(datetime)
    except (ValueError, OverflowError):
        raise CronError(f"{expression!r} never fires (no date matches it within"
                        f" {SEARCH_YEARS} years)") from None
    return schedule


def firing_text(t: float, zone: str = DEFAULT_ZONE) -> str:
    """A firing for humans, in its zone and in UTC: ``2026-03-29 03:00:00 CEST (01:00:00
    UTC)``; UTC alone for a schedule in UTC (or a zone unknown here)."""
    utc = datetime.fromtimestamp(t, tz=UTC)
    plain = f"{utc:%Y-%m-%d %H:%M:%S} UTC"
    if zone.upper() == "UTC":
        return plain
    try:
        local = utc.astimezone(zone_of(zone))
    except CronError:
        return plain
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({utc:%H:%M:%S} UTC)"

"""A cron schedule's firing pattern: its average period and every interval between
consecutive firings, found with croniter over one whole calendar cycle so that the answer
never depends on today's date (``cron2json`` decides period or ``cron`` entry from it)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from croniter import CroniterError, croniter

DAY = 86400
# 2001-01-01 is a Monday, and the 28 years from it (to 2029, with 7 leap years and no
# skipped century leap year) are one whole cycle of weekdays, month lengths and leap days.
REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)  # UTC: no daylight-saving jumps
CYCLE_DAYS = 10227


@dataclass(frozen=True)
class Schedule:
    """The firing pattern of a cron schedule: the average period and every interval seen."""

    period: float
    intervals: tuple[int, ...]

    @property
    def regular(self) -> bool:
        return len(self.intervals) == 1


@functools.lru_cache(maxsize=256)
def analyse_schedule(fields: str) -> Schedule:
    """The firing pattern of five cron fields. Raises ValueError when they are invalid or
    never fire."""
    parts = fields.split()
    if len(parts) != 5:
        raise ValueError(f"a schedule has five fields, got {len(parts)}: {fields!r}")
    try:
        expanded = croniter(fields, REFERENCE).expanded
        times = _times_of_day(parts[0], parts[1])
        days, cycle = _firing_days(parts[2], parts[3], parts[4], expanded[2:5])
    except CroniterError as exc:
        if "failed to find next date" in str(exc):
            raise ValueError(f"the schedule {fields!r} never fires") from None
        raise ValueError(f"invalid schedule {fields!r}: {exc}") from None
    if not days:
        raise ValueError(f"the schedule {fields!r} never fires")
    within = {later - earlier for earlier, later in pairwise(times)}
    across = {
        (later - earlier) * DAY - times[-1] + times[0]
        for earlier, later in pairwise([*days, days[0] + cycle])
    }
    return Schedule(cycle * DAY / (len(days) * len(times)), tuple(sorted(within | across)))


def _times_of_day(minute: str, hour: str) -> list[int]:
    """Seconds after midnight of each firing in a day (minute and hour fields only)."""
    end = REFERENCE + timedelta(days=1)
    iterator = croniter(f"{minute} {hour} * * *", REFERENCE - timedelta(seconds=1))
    times: list[int] = []
    while (moment := _next(iterator)) < end:
        times.append(int((moment - REFERENCE).total_seconds()))
    return times


def _firing_days(dom: str, month: str, dow: str, expanded: list[object]) -> tuple[list[int], int]:
    """Day numbers (from REFERENCE) with firings in one cycle, and the cycle length in days."""
    if all(values == ["*"] for values in expanded):
        return [0], 1
    end = REFERENCE + timedelta(days=CYCLE_DAYS)
    iterator = croniter(f"0 0 {dom} {month} {dow}", REFERENCE - timedelta(seconds=1))
    days: list[int] = []
    while (moment := _next(iterator)) < end:
        days.append((moment - REFERENCE).days)
    return days, CYCLE_DAYS


def _next(iterator: croniter) -> datetime:
    moment: datetime = iterator.get_next(datetime)
    return moment

"""The injected clock: monotonic time for intervals, wall time only for humans."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

# A periodic chore (heartbeat, command read, history sweep) may go out this share of its
# interval early when the loop is awake anyway: chores whose moments are close then share
# one wake-up instead of each waking the master on its own
TIMER_SLACK = 0.2


def slack_due(now: float, at: float, interval: float) -> bool:
    """Whether a chore due ``at``, repeated every ``interval``, may go out at ``now``."""
    return now >= at - TIMER_SLACK * interval


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (intervals, timeouts, lifetimes)."""

    def wall(self) -> datetime:
        """Wall-clock time, for logs and display only; never used for decisions."""


def wall_offset_from_env(environ: dict[str, str] | None = None) -> float:
    """``PANDA_DAEMON_CLOCK_OFFSET`` (seconds) shifts this master's wall clock: a diagnostic
    knob that shows clock skew changes nothing (decisions never read wall time)."""
    import os

    text = (environ if environ is not None else dict(os.environ)).get(
        "PANDA_DAEMON_CLOCK_OFFSET", "0")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"PANDA_DAEMON_CLOCK_OFFSET must be a number of seconds, got: {text!r}"
                         ) from None


class SystemClock:
    """The real clocks. ``wall_offset`` shifts wall time (tests inject clock skew with it)."""

    def __init__(self, wall_offset: float = 0.0) -> None:
        self.wall_offset = wall_offset

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.wall_offset, tz=UTC)

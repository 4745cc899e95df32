"""The pure scheduling decisions, driven with plain numbers."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.pool import staggered_lifetime
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.db.base.servertime import due_tolerance


def spec(name: str = "s", period: float = 10.0) -> DaemonSpec:
    return DaemonSpec(name=name, module=name, period=period, timeout=period * 3)


def test_due_scripts_in_due_order_skipping_running_and_disabled() -> None:
    states = [ScriptState(spec("late"), next_due=1.0), ScriptState(spec("early"), next_due=0.5),
              ScriptState(spec("future"), next_due=9.0),
              ScriptState(spec("busy"), next_due=0.0, running=3),
              ScriptState(spec("broken"), next_due=0.0, disabled="no module")]
    assert [s.spec.name for s in schedule.due_scripts(states, now=2.0)] == ["early", "late"]


def test_period_is_start_to_start() -> None:
    assert schedule.next_due_after_start(started=100.004, period=10) == 110.004


def test_missed_periods_are_skipped_not_burst() -> None:
    # due at 100, started at 135 (waited for a worker): next at 145, not 110, 120, 130
    assert schedule.next_due_after_start(started=135.0, period=10) == 145.0


def test_overrun_runs_once_right_after_then_keeps_period() -> None:
    state = ScriptState(spec(period=10), next_due=0.0)
    state.next_due = schedule.next_due_after_start(0.0, 10)  # run starts at 0, lasts 25 s
    state.running = 1
    assert schedule.due_scripts([state], now=20.0) == []  # never twice at once
    state.running = None
    assert schedule.overrun(0.0, 25.0, 10) == 15.0
    assert schedule.due_scripts([state], now=25.0) == [state]  # one run right after
    assert schedule.next_due_after_start(25.0, 10) == 35.0


def test_late_threshold_and_single_warning() -> None:
    assert schedule.late_threshold(60) == 300 and schedule.late_threshold(1200) == 600
    state = ScriptState(spec(period=60), next_due=0.0)
    assert schedule.late_to_warn([state], now=300.0) == []
    assert schedule.late_to_warn([state], now=300.5) == [state]
    state.late_warned_for = state.next_due
    assert schedule.late_to_warn([state], now=900.0) == []


def test_next_wakeup_is_the_earliest_future_event() -> None:
    states = [ScriptState(spec("a", 60), next_due=50.0), ScriptState(spec("b", 60), next_due=5.0),
              ScriptState(spec("c", 60), next_due=1.0, running=1)]
    assert schedule.next_wakeup(states, now=2.0) == 5.0
    # only a late-warning deadline remains for a due script that waits
    waiting = [ScriptState(spec("a", 60), next_due=1.0)]
    assert schedule.next_wakeup(waiting, now=2.0) == 301.0
    assert schedule.next_wakeup([], now=2.0) is None


def test_staggered_lifetimes_are_distinct_and_bounded() -> None:
    lifetimes = [staggered_lifetime(100, i, 4) for i in range(4)]
    assert lifetimes == [100, 87.5, 75, 62.5]
    assert staggered_lifetime(100, 0, 1) == 100


def test_next_due_is_one_period_after_the_due_time_not_after_the_start() -> None:
    # due at 100, handed over 3 ms late: due again at 110, not 110.003 (no drift)
    assert schedule.next_due_on_grid(due=100.0, period=10, started=100.003) == 110.0
    due = 100.0
    for _ in range(10000):  # a day of 5-s runs each 4 ms late still ends on the grid
        due = schedule.next_due_on_grid(due, 5.0, due + 0.004)
    assert due == 100.0 + 5.0 * 10000


def test_missed_periods_are_skipped_and_the_period_counts_from_the_late_start() -> None:
    # due at 100, started at 135 (waited for a worker): next at 144 (one period after the
    # start, less the tolerance of 1 s), not 110, 120, 130 (a burst) nor 140 (5 s later)
    assert schedule.next_due_on_grid(due=100.0, period=10, started=135.0) == 144.0
    assert schedule.next_due_on_grid(due=100.0, period=10, started=140.0) == 149.0


def test_the_tolerance_is_a_tenth_of_the_period_and_at_most_a_second() -> None:
    assert [due_tolerance(p) for p in (0.1, 2.0, 10.0, 2400.0)] == [0.01, 0.2, 1.0, 1.0]


def test_a_run_late_by_at_most_the_tolerance_keeps_the_grid() -> None:
    assert schedule.next_due_on_grid(due=100.0, period=10, started=101.0) == 110.0
    # a hair later: the period counts from the start (less the tolerance), 9 s after it
    assert schedule.next_due_on_grid(due=100.0, period=10, started=101.5) == 110.5


def _starts(period: float, delays: list[float], first: float = 0.0) -> list[float]:
    """Where a script's runs start when each is handed over ``delays[i]`` after its due
    time (the master's own bookkeeping: ``next_due_after_dispatch`` after each start)."""
    state = ScriptState(spec(period=period), next_due=first)
    starts = []
    for delay in delays:
        started = state.next_due + delay
        starts.append(started)
        state.next_due = schedule.next_due_after_dispatch(state, started)
        state.anchored = True
    return starts


@pytest.mark.parametrize("period", [0.1, 2.0, 10.0, 2400.0])
def test_consecutive_runs_are_never_closer_than_the_period_less_the_tolerance(
        period: float) -> None:
    rng = random.Random(19)
    floor = period - due_tolerance(period)
    for _ in range(200):
        # on time, a little late, late, whole periods late (a long gap), in any order
        delays = [rng.choice([0.0, rng.uniform(0, due_tolerance(period)),
                              rng.uniform(0, period), rng.uniform(period, 50 * period)])
                  for _ in range(30)]
        starts = _starts(period, delays, first=rng.uniform(0, 1000))
        gaps = [b - a for a, b in pairwise(starts)]
        assert min(gaps) >= floor - 1e-9 * period, (delays, gaps)


def test_on_time_runs_keep_the_grid_after_a_late_one() -> None:
    # late by 4 s once: the period counts from there (9 s after it), then on time again:
    # the grid (re-anchored once) holds with no drift
    starts = _starts(10.0, [0.0, 0.0, 4.0] + [0.003] * 1000)
    assert starts[2] == 24.0 and starts[3] == 33.003
    assert starts[-1] == pytest.approx(33.0 + 10.0 * 999 + 0.003, abs=1e-6)


def test_the_grid_is_anchored_on_the_first_start() -> None:
    # scripts queued together at start-up keep the spread their first starts gave them
    first = ScriptState(spec(period=10), next_due=0.0)
    first.next_due = schedule.next_due_after_dispatch(first, started=0.7)
    assert first.next_due == 10.7
    first.anchored = True
    assert schedule.next_due_after_dispatch(first, started=10.702) == 20.7

"""The pure scheduling decisions, driven with plain numbers."""

from __future__ import annotations

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.pool import staggered_lifetime
from pandaserver.daemons.master.schedule import ScriptState


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


def test_missed_periods_on_the_grid_are_skipped_not_burst() -> None:
    # due at 100, started at 135 (waited for a worker): next at 140, not 110, 120, 130
    assert schedule.next_due_on_grid(due=100.0, period=10, started=135.0) == 140.0
    assert schedule.next_due_on_grid(due=100.0, period=10, started=140.0) == 150.0


def test_the_grid_is_anchored_on_the_first_start() -> None:
    # scripts queued together at start-up keep the spread their first starts gave them
    first = ScriptState(spec(period=10), next_due=0.0)
    first.next_due = schedule.next_due_after_dispatch(first, started=0.7)
    assert first.next_due == 10.7
    first.anchored = True
    assert schedule.next_due_after_dispatch(first, started=10.702) == 20.7

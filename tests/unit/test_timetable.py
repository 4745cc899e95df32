"""The due-time heaps against the reference scans of ``schedule``, with plain numbers."""

from __future__ import annotations

import random

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.timetable import Timetable


def spec(name: str, period: float = 10.0) -> DaemonSpec:
    return DaemonSpec(name=name, module=name, period=period, timeout=period * 3)


def test_pop_due_in_due_order_skipping_running_and_disabled() -> None:
    table = Timetable({
        "late": ScriptState(spec("late"), next_due=1.0),
        "early": ScriptState(spec("early"), next_due=0.5),
        "future": ScriptState(spec("future"), next_due=9.0),
        "busy": ScriptState(spec("busy"), next_due=0.0, running=3),
        "broken": ScriptState(spec("broken"), next_due=0.0, disabled="no module")})
    first = table.pop_due(2.0)
    second = table.pop_due(2.0)
    assert first is not None and second is not None
    assert (first.spec.name, second.spec.name) == ("early", "late")
    assert table.pop_due(2.0) is None
    assert table.next_wakeup(2.0) == 9.0
    table.set_due(second, 3.0)  # changed after it was taken: due again at its new time
    assert table.next_wakeup(2.0) == 3.0
    table.finished(table["busy"])  # its run ended: due at once (a past due time)
    state = table.pop_due(2.0)
    assert state is not None and state.spec.name == "busy"
    table.requeue(state)  # no worker took it after all
    assert table.pop_due(2.0) is state


def test_a_dict_replaced_state_and_removal_leave_no_stale_entry() -> None:
    table = Timetable({"a": ScriptState(spec("a"), next_due=1.0)})
    old = table["a"]
    table["a"] = ScriptState(spec("a"), next_due=5.0)
    table.set_due(old, 0.0)  # the replaced state is no longer the timetable's
    assert table.pop_due(2.0) is None
    del table["a"]
    assert table.pop_due(10.0) is None and table.next_wakeup(10.0) is None


def test_heaps_decide_as_the_reference_scan_under_random_changes() -> None:
    rng = random.Random(13)
    names = [f"s{i:02d}" for i in range(40)]
    reference: dict[str, ScriptState] = {}
    table = Timetable(floor=5.0)
    now = 0.0
    for step in range(4000):
        now += rng.random()
        name = rng.choice(names)
        action = rng.random()
        if name not in reference or action < 0.05:
            state = ScriptState(spec(name, rng.choice([1.0, 3.0, 20.0])), next_due=now)
            reference[name] = state
            table[name] = state
        elif action < 0.08:
            del reference[name]
            del table[name]
        elif action < 0.4:
            table.set_due(reference[name], now + rng.uniform(-2, 10))
        elif action < 0.6:
            state = reference[name]
            if state.running is not None:
                table.finished(state)
            else:
                table.started(state, step, now, state.next_due)
        elif action < 0.7:
            state = reference[name]
            if state.disabled is not None:
                table.enable(state)
            else:
                table.disable(state, "broken")
        elif action < 0.8:
            state = reference[name]
            if state.acquiring:
                table.answered(state)
            else:
                table.asking(state, state.next_due)
        else:
            expected = [s.spec.name for s in schedule.late_to_warn(reference.values(), now, 5.0)]
            got = [s.spec.name for s in table.late_to_warn(now)]
            assert sorted(got) == sorted(expected), step
            for state in table.late_to_warn(now):
                raise AssertionError(f"warned twice: {state}")
            assert all(reference[n].late_warned_for == reference[n].next_due for n in got)
        expected_next = schedule.next_wakeup(reference.values(), now, 5.0)
        # the reference also names past late times it has not warned yet; the heap wakes
        # at once for those, and otherwise at the same moment
        if rng.random() < 0.3:
            due = [s.spec.name for s in schedule.due_scripts(reference.values(), now)]
            taken = []
            while (state := table.pop_due(now)) is not None:
                taken.append(state.spec.name)
            assert taken == due, step
            for n in taken:
                table.requeue(reference[n])
        got_next = table.next_wakeup(now)
        unwarned = schedule.late_to_warn(reference.values(), now, 5.0)
        if unwarned or any(s.waiting and s.next_due <= now for s in reference.values()):
            continue
        assert got_next == expected_next, step


def test_cost_per_decision_does_not_scan_every_script() -> None:
    table = Timetable({f"s{i}": ScriptState(spec(f"s{i}", 3600.0), next_due=1000.0 + i)
                       for i in range(20000)})
    calls = 0
    original = table.touch

    def counting(state: ScriptState) -> None:
        nonlocal calls
        calls += 1
        original(state)

    table.touch = counting  # type: ignore[method-assign]
    state = table.pop_due(1000.5)
    assert state is not None and state.spec.name == "s0"
    table.started(state, 1, 1000.5, 4600.0)
    assert table.next_wakeup(1000.5) == 1001.0
    assert calls == 1  # one heap update per change, however many scripts there are

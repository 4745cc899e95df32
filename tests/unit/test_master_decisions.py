"""Decisions of the master that need no process: the spawn back-off and the late warning,
driven by an injected (frozen) clock."""

from __future__ import annotations

import logging

import pytest
from freezegun import freeze_time

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base.clock import SystemClock
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.loop import Master
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.workers import MAX_SPAWN_BACKOFF


def spec(name: str, period: float) -> DaemonSpec:
    return DaemonSpec(name=name, module="record", period=period, timeout=period * 3)


def test_spawn_backoff_doubles_from_1_s_to_at_most_30_s() -> None:
    master = Master(DaemonSettings(path="x.cfg", n_proc=2), server="t")
    waits = []
    for now in range(100, 108):
        master.pool.back_off(float(now))
        waits.append(master.pool.spawn_backoff)
        assert master.pool.spawn_not_before == now + master.pool.spawn_backoff
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert MAX_SPAWN_BACKOFF == 30


def test_late_warning_once_per_due_time_naming_cause_and_wall_time(
        caplog: pytest.LogCaptureFixture) -> None:
    with freeze_time("2024-02-29 23:59:30", tz_offset=0) as frozen:
        master = Master(DaemonSettings(path="x.cfg", n_proc=1), server="t", clock=SystemClock())
        due = master.clock.monotonic()
        scripts = master.dispatcher.scripts
        scripts["slow"] = ScriptState(spec("slow", 60), next_due=due, running=7)  # running
        scripts["queued"] = ScriptState(spec("queued", 60), next_due=due)  # no idle worker
        scripts["hourly"] = ScriptState(spec("hourly", 3600), next_due=due)  # 1800 s
        caplog.set_level(logging.WARNING, logger="panda.master")

        def warnings() -> list[str]:
            master.dispatcher.warn_late(master.clock.monotonic())
            found = [r.getMessage() for r in caplog.records]
            caplog.clear()
            return found

        frozen.tick(299)
        assert warnings() == []  # not more than 300 s late yet
        # the master sleeps until the moment the warning is due, not longer
        assert schedule.next_wakeup(scripts.values(), master.clock.monotonic(),
                                    scripts.floor) == due + 300
        frozen.tick(2)
        assert sorted(warnings()) == [
            "queued is 301 s late (due at 2024-02-29 23:59:30 UTC): all 1 workers are busy",
            "slow is 301 s late (due at 2024-02-29 23:59:30 UTC): its previous run is"
            " still going",
        ]
        frozen.tick(600)
        assert warnings() == []  # once per due time, however long it stays late
        scripts.set_due(scripts["queued"], master.clock.monotonic())  # ran at +901 s; due again
        frozen.tick(301)
        assert warnings() == [
            "queued is 301 s late (due at 2024-03-01 00:14:31 UTC): all 1 workers are busy"]
        frozen.tick(1801 - 1202)
        assert warnings() == ["hourly is 1801 s late (due at 2024-02-29 23:59:30 UTC):"
                              " all 1 workers are busy"]


def test_the_master_wakes_up_for_the_late_warning() -> None:
    states = [ScriptState(spec("slow", 60), next_due=100.0, running=1)]
    assert schedule.next_wakeup(states, now=150.0) == 400.0  # due + 300 s
    assert schedule.next_wakeup(states, now=110.0, floor=0.5) == 130.0  # due + period / 2
    states[0].late_warned_for = 100.0
    assert schedule.next_wakeup(states, now=150.0) is None  # warned: nothing to wake for


@pytest.mark.parametrize(("value", "floor"), [(None, 300.0), ("0.5", 0.5), ("12", 12.0)])
def test_late_floor_from_the_environment(value: str | None, floor: float) -> None:
    environ = {} if value is None else {"PANDA_DAEMON_LATE_FLOOR": value}
    assert schedule.late_floor_from_env(environ) == floor
    assert schedule.late_threshold(10, floor) == max(floor, 5)


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_late_floor_says_what_is_allowed(value: str) -> None:
    with pytest.raises(ValueError, match="PANDA_DAEMON_LATE_FLOOR must be a positive number"
                                         f" of seconds, got: '{value}'"):
        schedule.late_floor_from_env({"PANDA_DAEMON_LATE_FLOOR": value})

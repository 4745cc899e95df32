"""The master's decisions, in-process: a real ``Master`` (pool, dispatcher, controls, loop)
on a clock moved by hand and fake process, containment, lease and command layers
(``fakemaster.py``). No process is started; each test takes milliseconds."""

from __future__ import annotations

import ast
import dataclasses
import signal
from collections.abc import Iterable
from pathlib import Path

import pytest
from fakemaster import Rig, spec

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.fleet.fencing import fence_at, hard_deadline, renew_at
from pandaserver.daemons.fleet.leasemanager import Turn
from pandaserver.daemons.master import loop, wakeups
from pandaserver.daemons.master.crashloop import backoff_delay
from pandaserver.daemons.master.schedule import REMOVED, ScriptState
from pandaserver.daemons.master.workers import SHUTDOWN_KILL_GRACE
from pandaserver.db.stores import operator_commands as dbcontrol

MASTER = Path(loop.__file__).parent


# ----- dispatch ---------------------------------------------------------------------------
def test_due_scripts_go_to_idle_workers_oldest_due_first_ties_by_name() -> None:
    rig = Rig([spec("b"), spec("a"), spec("c", period=5)], n_proc=1)
    rig.start_workers()
    rig.turn()  # all due at the start: one worker, so by name
    assert rig.busy() == {1: "a"}
    rig.master.dispatcher.scripts.set_due(rig.master.dispatcher.scripts["c"], 990.0)
    rig.at(1001.0)
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "c"}  # due at 990: before b's 1000
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "b"}
    assert [r.script for r in rig.history.started] == ["a", "c", "b"]


def test_a_busy_pool_keeps_due_scripts_waiting_until_a_worker_is_free() -> None:
    rig = Rig([spec("a"), spec("b"), spec("c")], n_proc=2)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "a", 2: "b"}
    rig.at(1005.0)
    assert rig.busy() == {1: "a", 2: "b"}, "c started without a free worker"
    assert rig.master.dispatcher.scripts["c"].running is None
    rig.done(2)
    rig.turn()
    assert rig.busy() == {1: "a", 2: "c"}
    run = rig.history.started[-1]
    assert (run.script, run.due, run.dispatched) == ("c", 1000.0, 1005.0)  # queued 5 s


@pytest.mark.parametrize("readings_before_due", range(12))
def test_a_script_falling_due_during_a_turn_is_dispatched_without_another_wake_up(
        readings_before_due: int) -> None:
    # the loop reads the clock afresh at each step of a turn: a script may not be due yet
    # when the turn dispatches and due when it computes its next wake-up; with a worker
    # idle nothing else wakes the loop, so the turn must come again at once (a run lost
    # for as long as the loop slept otherwise: it woke next for an unrelated timer)
    rig = Rig([spec("tick", period=1.0)], n_proc=1)
    rig.start_workers()
    rig.turn()
    rig.done(1)
    rig.turn()
    state = rig.master.dispatcher.scripts["tick"]
    assert (state.running, state.next_due) == (None, 1001.0)
    creep = 0.001
    rig.clock.creep = creep
    rig.clock.now = state.next_due - readings_before_due * creep + creep / 2
    wake = rig.turn()  # again at once while the loop asks to: as its wait would
    # run, or (the turn over before it fell due) the loop wakes for it
    assert rig.busy() == {1: "tick"} or (wake is not None and wake <= state.next_due), (
        f"tick due at {state.next_due}, idle worker, clock now {rig.clock.now}: not run,"
        f" and the loop sleeps until {wake}")


def test_a_run_started_late_is_next_due_a_period_after_its_start_less_the_tolerance() -> None:
    # one worker: "a" (period 10 s, tolerance 1 s) waits 4 s behind "b" for its second run
    rig = Rig([spec("a", period=10), spec("b", period=100)], n_proc=1)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "a"}
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "b"}
    rig.at(1014.0)  # a was due at 1010
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "a"}
    # 9 s after this late start, not 1020 (the next point of its old grid, 6 s after it)
    assert rig.master.dispatcher.scripts["a"].next_due == 1023.0
    rig.done(1)
    rig.at(1023.2)  # on time (0.2 s late): the new grid is kept
    assert rig.busy() == {1: "a"}
    assert rig.master.dispatcher.scripts["a"].next_due == 1033.0


def test_a_sync_script_asks_its_lease_first_and_runs_only_on_a_grant() -> None:
    rig = Rig([spec("s", period=20, sync=True)], n_proc=1)
    rig.start_workers()
    rig.turn()
    assert [name for name, _, _ in rig.leases.asked] == ["s"]
    assert rig.busy() == {} and rig.runs(1) == []  # nothing runs before the answer
    assert rig.slot(1).reserved == "s"  # its worker is kept meanwhile
    rig.turn()
    assert len(rig.leases.asked) == 1, "asked twice while the answer is pending"
    rig.leases.refuse(holder="other", wait=5.0)
    assert rig.busy() == {} and rig.runs(1) == [] and rig.slot(1).reserved is None
    assert rig.master.dispatcher.scripts["s"].next_due == 1005.0  # asks again when told
    assert rig.history.records == []  # a refusal is no run
    rig.at(1005.0)
    assert [name for name, _, _ in rig.leases.asked] == ["s"]
    generation = rig.leases.grant()
    [run] = rig.runs(1)
    assert (run["name"], run["generation"]) == ("s", generation)
    # the worker holds the lease's deadline before it starts the run
    assert rig.proc(1).deadlines() == [hard_deadline(1005.0, 30.0)]
    rig.done(1)
    assert rig.leases.released == [("s", generation)]


def test_a_worker_kept_for_a_lease_answer_past_its_lifetime_does_not_spin_the_loop() -> None:
    # its lifetime ends it once the answer is in (which wakes the loop); meanwhile its past
    # expiry is nothing to wake for (the loop turned again at once until the answer came)
    rig = Rig([spec("s", sync=True)], n_proc=1)
    rig.start_workers()
    rig.turn()
    assert [name for name, _, _ in rig.leases.asked] == ["s"]
    assert rig.slot(1).reserved == "s"
    rig.slot(1).expires = rig.clock.now - 1.0  # its lifetime is over
    rig.clock.now += 0.5
    wake = rig.master.turn()
    assert wake is not None and wake > rig.clock.now, f"the loop asks to turn again at {wake}"
    rig.leases.grant()
    rig.turn()
    assert rig.busy() == {1: "s"}  # the answer is used; the worker retires after the run


def test_a_sync_runs_number_is_taken_when_its_lease_is_asked_for() -> None:
    """The grant writes the run's history row under that number (db/stores/grantrun.py): a
    refusal gives it back; a grant not used removes the row it wrote."""
    rig = Rig([spec("s", period=20, sync=True)], n_proc=1)
    rig.start_workers()
    rig.turn()
    rig.leases.refuse(holder="other", wait=5.0)
    rig.at(1005.0)
    assert rig.leases.run_ids == [1, 1]  # given back: no row has it
    rig.leases.grant(run_row=True)
    [run] = rig.runs(1)
    assert run["run"] == 1 and [r.id for r in rig.history.started] == [1]
    rig.done(1)
    state = rig.master.dispatcher.scripts["s"]
    rig.at(state.next_due)
    assert rig.leases.run_ids[-1] == 2
    state.disabled = "its module was removed"  # meanwhile: the grant is not used
    generation = rig.leases.grant(run_row=True)
    assert rig.leases.not_run_rows == [("s", generation, 2)]
    assert ("s", generation) in rig.leases.released and rig.runs(1) == []  # no new run


def test_a_sync_script_whose_turn_is_elsewhere_is_not_asked_for() -> None:
    rig = Rig([spec("s", period=20, sync=True)], n_proc=1)
    rig.leases.turns["s"] = Turn(ask=False, at=1007.0)
    rig.start_workers()
    rig.turn()
    assert rig.leases.asked == [] and rig.master.dispatcher.scripts["s"].next_due == 1007.0


# ----- fencing ----------------------------------------------------------------------------
def sync_run(ttl: float = 30.0) -> Rig:
    rig = Rig([spec("s", period=60, timeout=600, sync=True)], n_proc=1, ttl=ttl)
    rig.start_workers()
    rig.turn()
    rig.leases.grant()
    assert rig.busy() == {1: "s"}
    rig.proc(1).deadlines()
    return rig


def test_a_renewal_not_confirmed_in_time_kills_the_run_before_its_lease_can_expire() -> None:
    rig = sync_run()
    rig.at(renew_at(1000.0, 30.0))
    [(held, _, reply)] = rig.leases.renewals
    assert held == [("s", 1)]
    reply(None, renew_at(1000.0, 30.0))  # the database did not answer
    fence = fence_at(1000.0, 30.0, KILL_GRACE)
    rig.at(fence - 0.001)
    assert not rig.processes.calls, "killed before its fence"
    assert rig.master.turn() is not None
    rig.at(fence)
    pid = rig.slot(1).pid
    assert rig.processes.calls[0] == ("term", pid, KILL_GRACE, "s run 1 fenced")
    run = rig.slot(1).run
    assert run is not None and run.fenced
    rig.at(fence + KILL_GRACE)  # SIGKILL at the hard deadline, before the expiry
    assert rig.processes.calls[1] == ("kill", pid)
    assert fence + KILL_GRACE <= hard_deadline(1000.0, 30.0)
    rig.exit(1, -9)
    assert rig.history.outcomes() == [("s", protocol.FENCED)]
    assert "could not be renewed" in (rig.history.records[0].error or "")
    assert rig.leases.released == [("s", 1)]


def test_a_confirmed_renewal_moves_the_deadline_the_worker_holds() -> None:
    rig = sync_run()
    rig.at(renew_at(1000.0, 30.0))
    [(_, sent, reply)] = rig.leases.renewals
    reply({"s"}, sent)
    rig.turn()
    assert rig.proc(1).deadlines() == [hard_deadline(sent, 30.0)]
    rig.at(fence_at(1000.0, 30.0, KILL_GRACE))
    assert rig.processes.calls == [], "fenced after a confirmed renewal"


def test_a_lease_the_database_says_is_lost_is_fenced_at_once() -> None:
    rig = sync_run()
    rig.at(renew_at(1000.0, 30.0))
    [(_, sent, reply)] = rig.leases.renewals
    reply(set(), sent)
    wake = rig.turn()  # fenced at once; then the loop sleeps while the run ends (it spun
    # until the run was over, the lost lease asking for a turn at once)
    run = rig.slot(1).run
    assert run is not None and run.fenced
    assert rig.processes.calls == [("term", rig.slot(1).pid, KILL_GRACE, "s run 1 fenced")]
    assert wake is not None and wake > rig.clock.now


# ----- operator controls ------------------------------------------------------------------
def polled(rig: Rig, holds: Iterable[dbcontrol.Hold] = (),
           commands: Iterable[dbcontrol.Command] = ()) -> None:
    rig.turn()  # the poll goes out on a turn
    rig.link.answer(holds, commands)


def held_from_the_start(rig: Rig, holds: Iterable[dbcontrol.Hold]) -> None:
    """The first poll (on the first turn) answers ``holds`` before any worker is ready."""
    rig.turn()
    rig.link.answer(holds)
    rig.ready()
    rig.turn()


def test_drain_keeps_sync_scripts_from_asking_and_undrain_lets_them() -> None:
    rig = Rig([spec("s", sync=True), spec("local")], n_proc=2)
    held_from_the_start(rig, [rig.link.hold(dbcontrol.DRAIN, "here")])
    assert rig.leases.asked == [] and rig.busy() == {1: "local"}
    rig.at(1000.0 + rig.master.controls.interval)
    assert rig.link.polls[-1][1]["draining"] is True  # reported to the fleet
    rig.link.answer([])  # undrained
    rig.turn()
    assert [name for name, _, _ in rig.leases.asked] == ["s"]


def test_a_paused_script_is_not_started_and_runs_as_soon_as_it_is_resumed() -> None:
    rig = Rig([spec("p"), spec("q")], n_proc=2)
    held_from_the_start(rig, [rig.link.hold(dbcontrol.PAUSE, "p")])
    assert rig.busy() == {1: "q"}
    rig.at(1500.0)
    assert rig.busy() == {1: "q"}, "a paused script started"
    rig.at(1500.0 + rig.master.controls.interval)
    rig.link.answer([])  # resumed
    rig.turn()
    assert rig.busy() == {1: "q", 2: "p"}


def test_run_now_claimed_here_runs_at_once_bypassing_a_pause() -> None:
    rig = Rig([spec("r", period=3600)], n_proc=1)
    rig.start_workers()
    rig.turn()
    rig.at(1001.0)
    rig.done(1)
    pause = rig.link.hold(dbcontrol.PAUSE, "r")
    command = rig.link.command(dbcontrol.RUN_NOW, "r")
    polled(rig, [pause], [command])
    [(command_id, lease, done)] = rig.link.claims
    assert (command_id, lease) == (command.id, None)
    rig.turn()
    assert rig.busy() == {}, "ran before the claim was granted"
    done("here", None, False)
    rig.turn()
    assert rig.busy() == {1: "r"}
    rig.at(1002.0)
    rig.done(1)
    rig.at(5000.0)
    assert rig.busy() == {}, "run-now lasted beyond its one run (the script is paused)"


def test_run_now_claimed_by_another_server_does_not_run_here() -> None:
    rig = Rig([spec("r", period=3600)], n_proc=1)
    rig.start_workers()
    rig.turn()
    rig.done(1)
    polled(rig, commands=[rig.link.command(dbcontrol.RUN_NOW, "r")])
    rig.link.claims.pop()[2]("elsewhere", None, False)
    rig.turn()
    assert rig.busy() == {}


def test_a_crashing_script_backs_off_and_a_clean_run_forgets_its_crashes() -> None:
    rig = Rig([spec("boom", period=0.1)], n_proc=1)
    rig.master.controls.crashes.rng = lambda: 1.0  # no jitter: the full delay
    rig.start_workers()
    rig.turn()
    rig.exit(1, -11)  # the worker dies during the run: a crash
    assert rig.history.outcomes() == [("boom", protocol.LOST)]
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {}, "retried at once after a crash"
    first = backoff_delay(1, rig.settings.crash_backoff_max, 1.0)
    wake = rig.turn()
    assert wake is not None and wake <= 1000.0 + first  # woken for the end of the back-off
    rig.at(1000.0 + first)
    assert rig.busy() == {1: "boom"}
    rig.exit(1, -11)
    rig.start_workers()
    rig.at(1000.0 + first + backoff_delay(2, rig.settings.crash_backoff_max, 1.0) - 0.01)
    assert rig.busy() == {}, "the second back-off is not longer than the first"
    rig.at(1000.0 + first + backoff_delay(2, rig.settings.crash_backoff_max, 1.0))
    rig.done(1)
    assert "boom" not in rig.master.controls.crashes.scripts
    rig.at(rig.clock.now + 0.1)
    assert rig.busy() == {1: "boom"}  # clean: on its period again


def test_kill_ends_the_script_run_here_and_records_who_asked() -> None:
    rig = Rig([spec("k", timeout=600)], n_proc=1)
    rig.start_workers()
    rig.turn()
    polled(rig, commands=[rig.link.command(dbcontrol.KILL, "k")])
    assert rig.processes.calls == [("term", rig.slot(1).pid, KILL_GRACE,
                                    "k run 1 killed by ops (test)")]
    rig.exit(1, -15)
    assert rig.history.outcomes() == [("k", protocol.KILLED)]
    assert "k" not in rig.master.controls.crashes.scripts  # an operator's kill is no crash


def test_restart_workers_recycles_one_worker_at_a_time_a_busy_one_after_its_run() -> None:
    rig = Rig([spec("a", timeout=600)], n_proc=2)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "a"}
    polled(rig, commands=[rig.link.command(dbcontrol.RESTART_WORKERS, "*")])
    rig.turn()
    assert rig.slot(2).state is WorkerState.EXITING and rig.slot(1).state is WorkerState.BUSY
    rig.exit(2, 0)
    rig.start_workers()  # its replacement
    rig.turn()
    assert rig.slot(1).state is WorkerState.RETIRING  # the busy one: after its run
    rig.done(1)
    assert rig.slot(1).state is WorkerState.EXITING


# ----- reload -----------------------------------------------------------------------------
def test_reload_adds_removes_and_changes_scripts_and_leaves_running_ones_alone() -> None:
    rig = Rig([spec("keep", period=3600, timeout=7200), spec("gone", period=3600),
               dataclasses.replace(spec("args", period=3600), arguments=("old",)),
               spec("busy", period=60, timeout=600), spec("shorter", period=3600)], n_proc=4)
    rig.start_workers()
    rig.turn()
    assert set(rig.busy().values()) == {"args", "busy", "gone", "keep"}
    rig.at(1001.0)
    for index, name in rig.busy().items():
        if name in ("args", "gone", "keep"):
            rig.done(index)
    rig.turn()
    assert set(rig.busy().values()) == {"busy", "shorter"}
    new = DaemonSettings(path="x.cfg", n_proc=4, scripts={s.name: s for s in [
        spec("keep", period=3600, timeout=7200), spec("shorter", period=60),
        dataclasses.replace(spec("args", period=3600), arguments=("new",)),
        spec("added", period=60)]})
    rig.at(1002.0)
    rig.master.apply_settings(new, rig.clock.now)
    scripts = rig.master.dispatcher.scripts
    assert "gone" not in scripts and scripts["busy"].disabled == REMOVED
    assert scripts["shorter"].next_due == 1001.0 + 60  # its last start + the new period
    assert scripts["keep"].next_due == 1000.0 + 3600  # unchanged spec: untouched
    # new arguments, same period: its place in time is kept, the new spec used
    assert scripts["args"].next_due == 1000.0 + 3600
    assert scripts["args"].spec.arguments == ("new",)
    assert rig.processes.calls == []  # nothing running was killed
    rig.turn()
    assert "added" in rig.busy().values()  # added: due at once
    busy = next(i for i, n in rig.busy().items() if n == "busy")
    rig.at(1100.0)
    rig.done(busy)  # the removed script's run ends normally
    assert "busy" not in scripts
    assert ("busy", protocol.OK) in rig.history.outcomes()


def test_reload_with_fewer_workers_retires_the_extra_ones_after_their_run() -> None:
    rig = Rig([spec("a", timeout=600), spec("b", timeout=600)], n_proc=2)
    rig.start_workers()
    rig.turn()
    rig.master.apply_settings(DaemonSettings(path="x.cfg", n_proc=1, scripts=rig.settings.scripts),
                              rig.clock.now)
    assert rig.slot(2).state is WorkerState.RETIRING and rig.slot(1).state is WorkerState.BUSY
    rig.done(2)
    assert rig.slot(2).state is WorkerState.EXITING
    rig.exit(2, 0)
    rig.at(1100.0)
    assert sorted(rig.master.pool.slots) == [1], "a retired worker was replaced"
    assert len(rig.processes.spawned) == 2


# ----- stop and timeouts ------------------------------------------------------------------
def test_stop_lets_runs_finish_within_the_grace_then_kills_them() -> None:
    rig = Rig([spec("long", timeout=600), spec("short", timeout=600)], n_proc=3,
              stop_grace=10.0)
    rig.start_workers()
    rig.turn()
    rig.master.signals.record(signal.SIGTERM, None)
    rig.turn()
    assert [m["op"] for m in rig.sent(3)] == ["init", "exit"]  # the idle one exits now
    assert rig.slot(1).state is WorkerState.RETIRING and rig.slot(2).state is WorkerState.RETIRING
    rig.exit(3, 0)
    rig.at(1005.0)
    rig.done(2)  # finishes within the grace: recorded as it ended, then the worker exits
    assert rig.slot(2).state is WorkerState.EXITING
    rig.exit(2, 0)
    rig.at(1009.99)
    assert rig.processes.calls == [], "killed before the grace was over"
    rig.at(1010.0)
    assert rig.processes.calls == [("term", rig.slot(1).pid, SHUTDOWN_KILL_GRACE,
                                    "stop grace is over")]
    rig.at(1010.0 + SHUTDOWN_KILL_GRACE)
    assert rig.processes.calls[-1] == ("kill", rig.slot(1).pid)
    rig.exit(1, -9)
    assert rig.turn() is None  # nothing left: the loop ends
    assert rig.history.outcomes() == [("short", protocol.OK), ("long", protocol.LOST)]
    assert "killed at shutdown" in (rig.history.records[1].error or "")
    assert rig.history.records[1].script == "long"


def test_a_second_stop_signal_kills_at_once() -> None:
    rig = Rig([spec("long", timeout=600)], n_proc=1, stop_grace=60.0)
    rig.start_workers()
    rig.turn()
    rig.master.signals.record(signal.SIGTERM, None)
    rig.at(1001.0)
    assert rig.processes.calls == []
    rig.master.signals.record(signal.SIGINT, None)
    rig.at(1002.0)
    assert rig.processes.calls == [("term", rig.slot(1).pid, SHUTDOWN_KILL_GRACE,
                                    "stop grace is over")]


def test_a_run_past_its_timeout_is_killed_and_recorded_as_timed_out() -> None:
    rig = Rig([spec("slow", period=60, timeout=30)], n_proc=1)
    rig.start_workers()
    rig.turn()
    wake = rig.at(1010.0)
    assert wake is not None and wake <= 1030.0  # woken for the timeout
    rig.at(1029.99)
    assert rig.processes.calls == []
    rig.at(1030.0)
    pid = rig.slot(1).pid
    assert rig.processes.calls == [("term", pid, KILL_GRACE, "slow run 1 exceeded its timeout")]
    rig.at(1030.0 + KILL_GRACE)
    assert rig.processes.calls[-1] == ("kill", pid)
    rig.exit(1, -9)
    assert rig.history.outcomes() == [("slow", protocol.TIMEOUT)]
    assert rig.history.records[0].error == "killed after its timeout of 30 s"
    assert "slow" not in rig.master.controls.crashes.scripts  # a timeout is no crash


def test_the_next_due_run_goes_to_an_idle_worker_before_a_replacement_is_spawned() -> None:
    """A timed-out run's worker is killed: the script's next run (overdue) is handed to the
    worker that is already idle first; the killed worker's replacement is spawned after."""
    rig = Rig([spec("slow", period=10, timeout=30)], n_proc=2)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "slow"}
    rig.at(1030.0)
    rig.at(1030.0 + KILL_GRACE)
    assert rig.processes.calls[-1] == ("kill", rig.slot(1).pid)
    busy_at_spawn: list[dict[int, str]] = []
    spawn = rig.processes.spawn

    def spawning(argv: list[str]) -> object:
        busy_at_spawn.append(rig.busy())
        return spawn(argv)

    rig.processes.spawn = spawning  # type: ignore[method-assign,assignment]
    rig.exit(1, -9)
    rig.turn()
    assert rig.history.outcomes() == [("slow", protocol.TIMEOUT)]
    assert busy_at_spawn == [{2: "slow"}]  # handed over, then the replacement spawned
    assert rig.slot(1).state is WorkerState.STARTING


@pytest.mark.parametrize("outcome", [protocol.OK, protocol.FAILED])
def test_run_once_stops_after_its_one_run(outcome: str) -> None:
    rig = Rig([spec("one")], n_proc=4, only="one")
    rig.start_workers()
    assert len(rig.master.pool.slots) == 1
    rig.turn()
    rig.done(1, outcome)
    assert rig.master.stopping and rig.master.dispatcher.once_outcome == outcome


def test_run_once_of_a_sync_script_whose_lease_is_refused_stops_skipped() -> None:
    """The refusal is handled by ``Refusals`` (refusals.py); the dispatcher stops the
    run-once master on its word, with nothing run."""
    rig = Rig([spec("one", sync=True)], n_proc=1, only="one")
    rig.start_workers()
    rig.turn()
    assert [name for name, _, _ in rig.leases.asked] == ["one"]
    rig.leases.refuse(holder="other", wait=5.0)
    assert rig.master.stopping and rig.master.dispatcher.once_outcome == protocol.SKIPPED
    assert rig.history.records == []


# ----- one writer -------------------------------------------------------------------------
def test_only_the_timetable_writes_the_scheduling_fields() -> None:
    """The timetable keeps its heaps in step with the states because every change goes
    through it: no other module of the master assigns a ``ScriptState`` field."""
    fields = {f.name for f in dataclasses.fields(ScriptState)}
    found = []
    for path in sorted(MASTER.glob("*.py")):
        if path.name == "timetable.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            found += [f"{path.name}:{t.lineno} .{t.attr}" for t in targets
                      if isinstance(t, ast.Attribute) and t.attr in fields]
    assert found == []


def test_a_command_read_that_cannot_be_sent_does_not_spin_the_loop() -> None:
    # due while the database is down (or its lane busy): the outage's probe, or the lane's
    # answer, wakes the loop for it; the read's own due time, past, did so without pause
    rig = Rig([spec("a", period=60)], n_proc=1)
    rig.link.down = True  # from the start: a master started during an outage
    rig.start_workers()
    wake = rig.turn()
    assert rig.link.polls == [] and wake is not None and wake > rig.clock.now
    rig.done(1)
    rig.at(rig.clock.now + 30.0)  # the database came back; nothing else woke the loop
    rig.link.down = False
    rig.turn()
    assert len(rig.link.polls) == 1  # read at the next turn


# ----- a loop that spins ------------------------------------------------------------------
def test_a_timer_already_past_that_nothing_acts_on_is_named_once_per_spell(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig([spec("a", period=60)], n_proc=1)
    rig.start_workers()
    rig.turn()
    rig.done(1)
    assert rig.turn() > rig.clock.now  # asleep until a's next run

    def stale(now: float) -> float:
        return now - 1.0

    rig.master.extra_events.append(stale)
    for _ in range(3 * wakeups.SPIN_TURNS):  # turned as ``run`` turns it
        wake = rig.master.turn()
        assert wake is not None
        rig.master.spin.waited(wake - rig.clock.now)
    spun = [r.getMessage() for r in caplog.records if "without waiting" in r.getMessage()]
    assert len(spun) == 1, spun
    assert "stale (-1.000 s)" in spun[0] and "the workers' deadlines" not in spun[0]
    rig.master.extra_events.remove(stale)
    rig.master.spin.waited(rig.turn() - rig.clock.now)  # a real wait ends the spell
    assert rig.master.spin.turns == 0

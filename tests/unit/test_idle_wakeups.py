"""Idle means asleep (issue 20): with nothing due, the master's next wake-up is the earliest
real deadline, never a short tick; operator commands are read when the database pushes
them, and the acknowledgements go out at once. A real ``Master`` on the fakes of
fakemaster.py, its clock moved by hand."""

from __future__ import annotations

import selectors
import threading
from typing import Any, cast

from fakemaster import Rig, spec
from sqlalchemy.engine import make_url

from pandaserver.config.daemon import COMMAND_CHECK_POLLED, COMMAND_CHECK_PUSHED
from pandaserver.daemons.base.clock import TIMER_SLACK, slack_due
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.fleet.history.keeper import HISTORY_BATCH, HistoryKeeper
from pandaserver.daemons.fleet.lanes import Completions, Lane, Op
from pandaserver.db.stores import history as dbhistory
from pandaserver.db.stores import operator_commands as dbcontrol

PERIOD = 600.0


def idle_rig(pushed: bool, **settings: object) -> Rig:
    """The default layout (n_proc 4, five scripts of 600 s), start-up runs done, the first
    command read answered: nothing is due until the scripts' next period."""
    rig = Rig([spec(f"s{i}", period=PERIOD) for i in range(5)], n_proc=4, **settings)
    rig.link.pushed = pushed
    rig.start_workers()
    rig.turn()
    rig.link.answer()  # the read at start
    for index in list(rig.master.pool.slots):
        rig.done(index)
    rig.at(1001.0)
    for index, slot in rig.master.pool.slots.items():  # the fifth script's run
        if slot.run is not None:
            rig.done(index)
    rig.turn()
    assert rig.busy() == {} and rig.link.polls == []
    return rig


def test_an_idle_master_sleeps_until_its_command_read_when_nothing_else_is_due() -> None:
    rig = idle_rig(pushed=True)
    read = 1000.0 + COMMAND_CHECK_PUSHED  # the read at start was sent at 1000
    assert rig.turn() == read, "woke before anything was due"
    assert rig.at(read - TIMER_SLACK * COMMAND_CHECK_PUSHED - 0.001) == read
    assert rig.link.polls == [], "read early while nothing else woke the master"
    assert rig.at(read) is not None and len(rig.link.polls) == 1
    rig.link.answer()
    assert rig.turn() == read + COMMAND_CHECK_PUSHED  # then the next read, not a tick


def test_without_notifications_the_read_is_the_poll_at_its_own_default() -> None:
    rig = idle_rig(pushed=False)
    assert rig.turn() == 1000.0 + COMMAND_CHECK_POLLED
    explicit = idle_rig(pushed=True, command_interval=5.0)  # the key wins on every backend
    assert explicit.turn() == 1005.0


def test_a_notification_reads_at_once_and_the_acknowledgement_goes_out_at_once() -> None:
    rig = idle_rig(pushed=True)
    rig.clock.now = 1010.0
    rig.link.notify()  # a command row was committed: PostgreSQL notified the master
    rig.turn()
    assert len(rig.link.polls) == 1, "a notification did not make the master read"
    resume = rig.link.command(dbcontrol.RESUME, "s1")  # changes no state: only the ack
    rig.link.answer([], [resume])
    rig.turn()  # same instant: the acknowledgement is written now, not at the next read
    [(acks, state, _)] = rig.link.polls
    assert acks == [(resume.id, "running")] and state is None
    rig.link.answer()
    assert rig.turn() == 1010.0 + COMMAND_CHECK_PUSHED, "a short tick after the command"
    assert rig.link.polls == []


def test_a_changed_state_is_written_at_once() -> None:
    rig = idle_rig(pushed=True)
    rig.clock.now = 1010.0
    rig.link.notify()
    rig.turn()
    pause = rig.link.command(dbcontrol.PAUSE, "s1")
    rig.link.answer([rig.link.hold(dbcontrol.PAUSE, "s1")], [pause])
    rig.turn()
    [(acks, state, _)] = rig.link.polls
    assert acks == [(pause.id, "paused")] and state is not None and state["paused"] == ["s1"]


def test_a_read_sends_the_state_only_when_it_changed() -> None:
    rig = idle_rig(pushed=False)
    rig.at(1000.0 + COMMAND_CHECK_POLLED)
    [(_, state, _)] = rig.link.polls
    assert state is None, "the unchanged state was written again"


def test_chores_close_to_each_other_share_a_wake_up() -> None:
    assert slack_due(95.0, 100.0, 30.0) and not slack_due(93.9, 100.0, 30.0)


# ----- the fleet's side: answers wake the loop, calls start as it goes to sleep ---------------

def readable(fd: int, timeout: float) -> bool:
    """Whether the loop's wait on ``fd`` would return within ``timeout`` (0: right now)."""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


class HeldStore:
    """HistoryStore's writes, each held until the test lets it through."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.closed_abandoned = 0

    def write_many(self, items: list[Any]) -> int:
        assert self.release.wait(10), "the test never let the write through"
        return 0

    def close_abandoned(self, stale_after: float, except_master: str | None = None) -> int:
        self.closed_abandoned += 1
        return 1


def keeper_on(store: HeldStore, clock: list[float], completions: Completions,
              abandoned: Any = None) -> HistoryKeeper:
    return HistoryKeeper(
        cast(dbhistory.HistoryStore, store), server="srv", master_id="me", master_pid=1,
        monotonic=lambda: clock[0], heartbeat_interval=lambda: 30.0,
        url=make_url("sqlite://"), on_outage=lambda exc: None, on_written=lambda: None,
        abandoned=abandoned, wake=completions.wake)


def test_a_history_write_in_flight_sets_no_timer_and_its_answer_wakes_the_wait() -> None:
    completions = Completions()
    store = HeldStore()
    clock = [1000.0]
    keeper = keeper_on(store, clock, completions)
    try:
        keeper.start(Run(id=1, script="s1", worker=0, pid=7, due=1000.0, dispatched=1000.0,
                         timeout_at=2000.0))
        clock[0] += HISTORY_BATCH
        wake = keeper.tick(clock[0], usable=True)  # hands the batch to the writer thread
        assert keeper.writer.busy
        assert wake == clock[0] + 30.0, "a timed look for the writer's answer"
        assert not readable(completions.fileno(), 0), "woke before the answer"
        store.release.set()
        assert readable(completions.fileno(), 10), "the writer's answer did not wake the wait"
        completions.drain()
        keeper.tick(clock[0], usable=True)  # the turn after the wake-up collects it
        assert not keeper.writer.busy and keeper.written == 1
    finally:
        store.release.set()
        keeper.writer.close(5)
        completions.close()


def test_a_deferred_call_reaches_its_thread_only_when_the_loop_goes_to_sleep() -> None:
    completions = Completions()
    lane = Lane("test", completions)
    lane.defer = True  # as Master.run sets it (FleetDb.defer_calls)
    answers: list[Any] = []
    try:
        lane.submit(Op("look", lambda: "answer", lambda *a: answers.append(a), 5.0), 100.0)
        assert lane.next_deadline() == 105.0, "its bound runs from the submission"
        assert lane._runner.inbox.qsize() == 0, "the thread was woken while the loop ran"
        lane.start()  # what the master's wait does just before it sleeps
        assert readable(completions.fileno(), 10), "the answer did not wake the wait"
        [(done_lane, op)] = completions.drain()
        assert done_lane is lane and op.result == "answer" and lane.finished(op, 100.5)
        lane.start()  # nothing new: nothing handed over twice
        assert lane._runner.inbox.qsize() == 0
    finally:
        lane.close()
        completions.close()


def test_the_sweep_of_dead_masters_runs_only_when_its_look_finds_one() -> None:
    completions = Completions()
    store = HeldStore()
    found = [False]
    keeper = keeper_on(store, [1000.0], completions,
                       abandoned=lambda stale, master: found[0])
    try:
        sweep = keeper.sweep_due(1000.0, usable=True)
        assert sweep is not None and sweep(None) == 0 and store.closed_abandoned == 0, \
            "the sweep's transaction ran with nothing to close"
        assert sweep(False) == 0 and store.closed_abandoned == 0, \
            "the sweep's transaction ran when the heartbeat's look found nothing"
        assert keeper.sweep_due(1001.0, usable=True) is None  # once per heartbeat interval
        found[0] = True
        sweep = keeper.sweep_due(1030.0, usable=True)
        assert sweep is not None and sweep(None) == 1 and store.closed_abandoned == 1
        assert sweep(True) == 1 and store.closed_abandoned == 2  # the heartbeat's look
    finally:
        keeper.writer.close(5)
        completions.close()

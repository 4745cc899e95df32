"""Idle means asleep (issue 20): with nothing due, the master's next wake-up is the earliest
real deadline, never a short tick; operator commands are read when the database pushes
them, and the acknowledgements go out at once. A real ``Master`` on the fakes of
fakemaster.py, its clock moved by hand."""

from __future__ import annotations

from fakemaster import Rig, spec

from pandaserver.config.daemon import COMMAND_CHECK_POLLED, COMMAND_CHECK_PUSHED
from pandaserver.daemons.base.clock import TIMER_SLACK, slack_due
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

"""Lease lifetimes as the holder counts them, renewals and fencing, and the reload plan:
pure logic, driven with plain numbers."""

from __future__ import annotations

from collections.abc import Callable

from pandaserver.config.daemon import LEASE_TTL_MIN
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.fleet.fencing import SAFETY, LeaseClock, fence_at, hard_deadline, minimum_ttl
from pandaserver.daemons.fleet.fleetdb import CALL_TIMEOUT
from pandaserver.daemons.fleet.keeper import LeaseKeeper
from pandaserver.daemons.fleet.leasemanager import AcquireReply, RenewReply, Turn
from pandaserver.daemons.master.reload import plan_reload
from pandaserver.daemons.master.schedule import ScriptState


class FakeLeases:
    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl: float | None = ttl
        self.epoch = 0
        self.asked: list[tuple[list[tuple[str, int]], float, RenewReply]] = []

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        raise AssertionError("not used")

    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        raise AssertionError("not used")

    def renew(self, held: list[tuple[str, int]], now: float, reply: RenewReply) -> None:
        self.asked.append((held, now, reply))

    def release(self, name: str, generation: int | None) -> None:
        return None

    def next_release(self) -> float | None:
        return None

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        return None


def test_the_smallest_accepted_ttl_leaves_room_for_a_slow_renewal_and_the_kill() -> None:
    assert minimum_ttl(KILL_GRACE, CALL_TIMEOUT) <= LEASE_TTL_MIN
    # a renewal sent at ttl/3 that takes the whole call timeout still lands before the fence
    ttl = LEASE_TTL_MIN
    assert ttl / 3 + CALL_TIMEOUT <= fence_at(0.0, ttl, KILL_GRACE)
    # and SIGKILL goes out SAFETY seconds before the earliest expiry
    assert hard_deadline(0.0, ttl) == ttl - SAFETY


def test_deadlines_count_from_when_the_renewal_was_sent_not_answered() -> None:
    clock = LeaseClock("x", 3, sent=100.0, ttl=30.0)
    clock.confirm(110.0)
    assert clock.hard == 110.0 + 30.0 - SAFETY
    clock.confirm(105.0)  # an older confirmation arriving late never moves it back
    assert clock.hard == 110.0 + 30.0 - SAFETY


def renewal_keeper() -> tuple[LeaseKeeper, FakeLeases]:
    leases = FakeLeases(ttl=30.0)
    keeper = LeaseKeeper(leases, kill_grace=KILL_GRACE)
    assert keeper.hold(1, "x", 7, sent=0.0) is not None
    return keeper, leases


def answer(leases: FakeLeases) -> Callable[[set[str] | None], None]:
    _, sent, reply = leases.asked.pop()
    return lambda names: reply(names, sent)


def test_a_confirmed_renewal_moves_the_fence_and_the_worker_deadline() -> None:
    keeper, leases = renewal_keeper()
    keeper.tick(5.0)
    assert not leases.asked, "renewed before a third of the ttl"
    keeper.tick(10.0)
    assert leases.asked and leases.asked[0][0] == [("x", 7)]
    answer(leases)({"x"})
    assert keeper.moved == {1}
    assert keeper.held[1].sent == 10.0
    assert keeper.due_fences(10.0 + 30.0 - SAFETY - KILL_GRACE - 0.01) == []
    assert keeper.due_fences(10.0 + 30.0 - SAFETY - KILL_GRACE) == [1]


def test_an_unconfirmed_lease_is_fenced_before_it_can_expire() -> None:
    keeper, leases = renewal_keeper()
    keeper.tick(10.0)
    answer(leases)(None)  # the database did not answer
    keeper.tick(10.5)
    assert not leases.asked, "retried sooner than RENEW_RETRY"
    keeper.tick(11.0)
    assert leases.asked, "not retried"
    fence = fence_at(0.0, 30.0, KILL_GRACE)
    assert keeper.due_fences(fence - 0.01) == []
    assert keeper.due_fences(fence) == [1]
    keeper.fenced(1)
    assert keeper.due_fences(fence + 5) == [], "fenced twice"


def test_a_lease_the_database_says_is_no_longer_ours_is_fenced_at_once() -> None:
    keeper, leases = renewal_keeper()
    keeper.tick(10.0)
    answer(leases)(set())
    assert keeper.due_fences(10.0) == [1]


def spec(name: str, period: float) -> DaemonSpec:
    return DaemonSpec(name=name, module=name, period=period, timeout=period)


def test_reload_plan_moves_a_shortened_period_earlier_and_keeps_a_longer_one() -> None:
    scripts = {
        "short": ScriptState(spec=spec("short", 3600), next_due=3700, run_started=100),
        "long": ScriptState(spec=spec("long", 10), next_due=110, run_started=100),
        "gone": ScriptState(spec=spec("gone", 10), next_due=110),
        "busy": ScriptState(spec=spec("busy", 10), next_due=110, running=4),
    }
    new = {"short": spec("short", 60), "long": spec("long", 600), "new": spec("new", 5)}
    plan = plan_reload(scripts, new, slots=[1, 2, 3], n_proc=2, now=120)
    assert plan.changed["short"][1] == 160  # its last start + the new period
    assert plan.changed["long"][1] == 110  # never later than it already was
    assert plan.removed == ["gone"] and plan.removed_after_run == ["busy"]
    assert [s.name for s in plan.added] == ["new"]
    assert plan.retire == [3]

"""A failover of the database, decided in-process: the server's identity, the gate that holds
lease statements for lease_ttl + SAFETY, the runs fenced at once, answers across the change
not trusted. (The real primary and standby: tests/acceptance/test_failover.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from fakemaster import Rig, spec

from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.fleet.dbleases import DbLeases
from pandaserver.daemons.fleet.failover import FailoverGate
from pandaserver.daemons.fleet.fencing import SAFETY, fence_at
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.db.base.serverid import IdentityWatch, ServerChanged, ServerIdentity

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PRIMARY = ServerIdentity(7001, 1, T0)
RESTARTED = ServerIdentity(7001, 1, T0.replace(hour=1))  # same cluster, same timeline
PROMOTED = ServerIdentity(7001, 2, T0.replace(hour=2))  # the standby: a new timeline
OTHER = ServerIdentity(9999, 1, T0)  # another cluster altogether


def test_a_restart_is_the_same_server_and_a_promotion_or_another_cluster_is_not() -> None:
    watch = IdentityWatch()
    watch.seen(PRIMARY)
    watch.seen(PRIMARY)
    watch.seen(RESTARTED)
    assert (watch.epoch, watch.restarts) == (0, 1)
    watch.check(0)
    watch.seen(PROMOTED)
    assert watch.epoch == 1 and watch.changes == [(RESTARTED, PROMOTED)]
    with pytest.raises(ServerChanged):
        watch.check(0)
    watch.seen(OTHER)
    assert watch.epoch == 2


def test_the_gate_closes_once_per_failover_for_lease_ttl_and_the_margin() -> None:
    watch = IdentityWatch()
    watch.seen(PRIMARY)
    gate = FailoverGate(watch, lambda: 15.0)
    assert not gate.notice(100.0) and not gate.closed(100.0)
    gate.check()  # a lane's statement on the server the loop knows: allowed
    watch.seen(PROMOTED)
    with pytest.raises(ServerChanged):  # a lane got there before the loop noticed
        gate.check()
    assert gate.notice(100.0) and not gate.notice(101.0)
    gate.check()
    assert gate.closed(100.0 + 15.0 + SAFETY - 0.001)
    assert not gate.closed(100.0 + 15.0 + SAFETY)
    assert gate.failovers == 1


def test_a_failover_fences_the_running_sync_run_at_once() -> None:
    rig = Rig([spec("s", period=60, timeout=600, sync=True)], n_proc=1, ttl=30.0)
    rig.start_workers()
    rig.turn()
    rig.leases.grant()
    assert rig.busy() == {1: "s"}
    rig.at(1001.0)
    assert rig.processes.calls == []
    rig.leases.epoch = 1  # the lease store noticed a failover
    rig.master.turn()
    run = rig.slot(1).run
    assert run is not None and run.fenced  # long before its fence on the lease's clock
    assert rig.processes.calls == [("term", rig.slot(1).pid, KILL_GRACE, "s run 1 fenced")]
    assert 1001.0 < fence_at(1000.0, 30.0, KILL_GRACE)
    assert rig.leases.renewals == []  # and its lease is not renewed


# ----- DbLeases behind the gate -----------------------------------------------------------
@dataclass
class FakeFleet:
    gate: FailoverGate
    server: str = "srv00"
    pid: int = 1
    holder: Any = None
    clock: float = 0.0
    settings: Any = field(default_factory=lambda: SimpleNamespace(lease_ttl=15.0,
                                                                  heartbeat_interval=30.0))
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    probe_interval: float = 2.0
    at_close: list[Any] = field(default_factory=list)  # FleetDb's hooks at its close

    def monotonic(self) -> float:
        return self.clock

    def usable(self, now: float) -> bool:
        return True

    def _submit(self, lane: str, what: str, operation: Any, done: Any,
                timeout: float | None = None) -> None:
        self.calls.append((lane, what, done))


def failed_over() -> tuple[DbLeases, FakeFleet, IdentityWatch]:
    watch = IdentityWatch()
    watch.seen(PRIMARY)
    fleet = FakeFleet(FailoverGate(watch, lambda: 15.0))
    return DbLeases(fleet), fleet, watch  # type: ignore[arg-type]


def test_no_grant_is_asked_for_until_the_old_leases_have_fenced_themselves() -> None:
    leases, fleet, watch = failed_over()
    watch.seen(PROMOTED)
    fleet.gate.notice(50.0)
    replies: list[LeaseDecision] = []
    leases.acquire(spec("s", period=60, sync=True), 51.0, replies.append)
    assert fleet.calls == []  # nothing reaches the database
    [refused] = replies
    assert not refused.granted and refused.unavailable
    assert refused.wait == pytest.approx(50.0 + 15.0 + SAFETY - 51.0)
    leases.acquire(spec("s", period=60, sync=True), 50.0 + 15.0 + SAFETY, replies.append)
    assert [what for _, what, _ in fleet.calls] == ["lease"]


def test_a_grant_or_renewal_answered_across_a_failover_is_not_trusted() -> None:
    leases, fleet, watch = failed_over()
    replies: list[LeaseDecision] = []
    leases.acquire(spec("s", period=60, sync=True), 10.0, replies.append)
    renewed: list[set[str] | None] = []
    leases.renew([("t", 4)], 10.0, lambda names, sent: renewed.append(names))
    watch.seen(PROMOTED)
    fleet.gate.notice(11.0)  # FleetDb.collect notices before it runs the answers
    [(_, _, grant_done), (_, _, renew_done)] = fleet.calls
    grant_done(SimpleNamespace(granted=True, generation=5, wait=0.0, holder="srv00",
                               due_in=60.0), None, False)
    renew_done({"t"}, None, False)
    assert [(r.granted, r.unavailable) for r in replies] == [(False, True)]
    assert renewed == [set()]  # refused: the keeper fences it at once
    leases.renew([("t", 4)], 12.0, lambda names, sent: renewed.append(names))
    assert renewed == [set(), set()] and len(fleet.calls) == 2  # closed: not even sent

"""A failover of the database, decided in-process: the server's identity, the gate that holds
lease statements for lease_ttl + SAFETY, the runs fenced at once, answers across the change
not trusted. (The real primary and standby: tests/acceptance/test_failover.py.)"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from fakemaster import Rig, spec

from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.fleet.dbleases import DbLeases
from pandaserver.daemons.fleet.failover import FailoverGate
from pandaserver.daemons.fleet.fencing import SAFETY, fence_at
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.db.base.serverid import (
    HistoryAge,
    IdentityWatch,
    ServerChanged,
    ServerIdentity,
    history_elapsed,
    read_identity,
)

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
    rig.turn()  # as its wait would: fenced, then asleep while the run ends
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
    member: bool = True  # a fleet member (not run-once)
    at_close: list[Any] = field(default_factory=list)  # FleetDb's hooks at its close
    listener: Any = None

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


# ----- a master that starts after the failover: the server says how old its history is -----
def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_how_long_ago_the_history_began_from_the_first_arrival_and_the_checkpoint() -> None:
    # timeline 1, nothing else recorded: never promoted, nothing to wait for
    assert history_elapsed(1, at(0), at(0), 0, 1, at(0)) == math.inf
    # timeline 1 beside other histories (a copy of a fleet's database): counted like others
    assert history_elapsed(1, at(10), at(13), 1, None, None) == 3.0
    # a promoted standby: first reached by a master 3 s ago; a later checkpoint changes nothing
    assert history_elapsed(2, at(10), at(13), 1, 2, at(12)) == 3.0
    # ... an earlier checkpoint on this timeline proves the promotion older (its time is
    # kept in whole seconds, rounded down: one more second is counted)
    assert history_elapsed(2, at(10), at(100), 0, 2, at(5)) == 94.0
    # ... a checkpoint of the timeline before proves nothing
    assert history_elapsed(2, at(10), at(13), 0, 1, at(-500)) == 3.0
    # just recorded by this master (the database's clock: never negative)
    assert history_elapsed(3, at(10), at(9.99), 2, 2, at(0)) == 0.0


def test_a_history_begun_recently_closes_the_gate_for_the_rest_of_the_window() -> None:
    clock = [100.0]
    watch = IdentityWatch()
    watch.seen(PROMOTED)  # this master's first server: no failover it could notice
    gate = FailoverGate(watch, lambda: 15.0, lambda: clock[0])
    watch.aged(HistoryAge(PROMOTED, 5.0, 100.0))  # promoted at least 5 s before 100.0
    assert not gate.notice(100.0) and gate.failovers == 0  # nothing to fence: no run held
    end = 100.0 + 15.0 + SAFETY - 5.0
    assert gate.closed(end - 0.001) and not gate.closed(end)
    assert gate.remaining(101.0) == pytest.approx(end - 101.0)
    with pytest.raises(ServerChanged):  # a lane that connected first: refused there too
        gate.check()
    clock[0] = end
    gate.check()


def test_an_old_or_unpromoted_history_never_closes_the_gate() -> None:
    watch = IdentityWatch()
    watch.seen(PRIMARY)
    gate = FailoverGate(watch, lambda: 15.0, lambda: 100.0)
    watch.aged(HistoryAge(PRIMARY, math.inf, 100.0))
    assert not gate.closed(100.0)
    watch.aged(HistoryAge(PRIMARY, 3600.0, 100.0))
    assert not gate.closed(100.0)
    gate.check()
    # an age read of another history than the current one is not taken
    watch.aged(HistoryAge(PROMOTED, 0.0, 100.0))
    assert not gate.closed(100.0) and watch.age is not None and watch.age.elapsed == 3600.0


def test_a_master_started_after_a_failover_asks_for_no_lease_until_the_window_ends() -> None:
    watch = IdentityWatch()
    watch.seen(PROMOTED)
    fleet = FakeFleet(FailoverGate(watch, lambda: 15.0))
    leases = DbLeases(fleet)  # type: ignore[arg-type]
    watch.aged(HistoryAge(PROMOTED, 2.0, 50.0))
    replies: list[LeaseDecision] = []
    leases.acquire(spec("s", period=60, sync=True), 51.0, replies.append)
    assert fleet.calls == [] and not replies[0].granted and replies[0].unavailable
    assert replies[0].wait == pytest.approx(50.0 + 15.0 + SAFETY - 2.0 - 51.0)
    leases.acquire(spec("s", period=60, sync=True), 50.0 + 15.0 + SAFETY - 2.0, replies.append)
    assert [what for _, what, _ in fleet.calls] == ["lease"]


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.row: tuple[Any, ...] | None = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.conn.statements.append(sql.split()[0])
        self.conn.clock[0] += self.conn.statement_time
        if "daemon_db_timeline" in sql and self.conn.no_table:
            raise RuntimeError('relation "daemon_db_timeline" does not exist')
        if sql.startswith("INSERT"):
            self.conn.first_seen.setdefault(params[:2], self.conn.now)
        elif "pg_control_system" in sql:
            self.row = (7001, self.conn.timeline, T0)
        else:
            self.row = (self.conn.first_seen[params], self.conn.now, 1, 1, at(-900))

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.row

    def close(self) -> None:
        pass


@dataclass
class FakeConnection:
    now: datetime
    no_table: bool = False
    timeline: str = "00000002"  # as pg_walfile_name gives it: a promoted standby's
    autocommit: bool = True
    statements: list[str] = field(default_factory=list)
    first_seen: dict[tuple[Any, ...], datetime] = field(default_factory=dict)
    clock: list[float] = field(default_factory=lambda: [0.0])  # the master's monotonic
    statement_time: float = 0.0

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def rollback(self) -> None:
        self.statements.append("ROLLBACK")


def test_the_first_connection_to_a_history_records_it_and_reads_its_age() -> None:
    clock = [70.0]
    watch = IdentityWatch(monotonic=lambda: clock[0], seen_by="srv00 pid 1")
    conn = FakeConnection(now=at(0))
    conn.first_seen[("7001", 2)] = at(-4)  # another master reached it 4 s ago
    watch._connected(conn, None)
    assert watch.age == HistoryAge(ServerIdentity(7001, 2, T0), 4.0, 70.0)
    assert conn.statements == ["SELECT", "INSERT", "SELECT"]
    watch._connected(conn, None)  # the same history: its age is not read again
    assert conn.statements[3:] == ["SELECT"]


def test_an_unreadable_age_counts_as_a_failover_just_now() -> None:
    watch = IdentityWatch(monotonic=lambda: 70.0)
    conn = FakeConnection(now=at(0), no_table=True)
    watch._connected(conn, None)
    assert watch.age is not None and watch.age.elapsed == 0.0
    assert conn.statements[-1] == "ROLLBACK"
    assert FailoverGate(watch, lambda: 15.0, lambda: 70.0).closed(70.0 + 15.0 + SAFETY - 0.1)


class FakePyMySql:
    """PyMySQL's shape: ``autocommit`` is a method, the mode is ``get_autocommit()``."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.ended: list[str] = []

    def cursor(self) -> Any:
        rows = self.rows
        return SimpleNamespace(execute=lambda sql, params=(): None,
                               fetchone=lambda: rows.pop(0), close=lambda: None)

    def autocommit(self, value: bool) -> None:  # pragma: no cover - the shape only
        raise AssertionError("not called")

    def get_autocommit(self) -> bool:
        return False

    def rollback(self) -> None:
        self.ended.append("rollback")


def test_a_mysql_server_is_its_server_id_host_and_port_and_a_replica_is_read_only() -> None:
    conn = FakePyMySql([("1@db1:3306", "00000001", None), ("2@db2:3306", None, None)])
    primary = read_identity(conn, "mysql")
    assert primary == ServerIdentity("1@db1:3306", 1, None)
    assert read_identity(conn, "mysql") == ServerIdentity("2@db2:3306", None, None)
    assert conn.ended == ["rollback", "rollback"]  # no transaction left open by the reads
    watch = IdentityWatch()
    watch.seen(primary)
    watch.seen(ServerIdentity("1@db1:3306", 1, None))  # reconnected to the same server
    assert watch.epoch == 0
    watch.seen(ServerIdentity("2@db2:3306", 1, None))  # the replica, promoted
    assert watch.epoch == 1


def test_the_age_is_logged_by_a_master_that_noticed_nothing_and_not_twice_by_one_that_did(
        caplog: pytest.LogCaptureFixture) -> None:
    late = IdentityWatch()
    late.seen(PROMOTED)
    late.aged(HistoryAge(PROMOTED, 1.5, 100.0))
    FailoverGate(late, lambda: 15.0).notice(100.0)
    running = IdentityWatch()
    running.seen(PRIMARY)
    gate = FailoverGate(running, lambda: 15.0)
    running.seen(PROMOTED)
    running.aged(HistoryAge(PROMOTED, 0.0, 100.0))
    assert gate.notice(100.5)  # its own window ends later than the history's: one ERROR
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if "began at most" in r.getMessage() or "failover noticed" in r.getMessage()]
    assert [level for level, _ in said] == ["WARNING", "ERROR"]
    assert "began at most 1.5 s ago" in said[0][1]


def test_the_age_is_dated_after_its_statements_not_before() -> None:
    # slow statements (1 s each): the age held when they ran, so the master's reading of its
    # clock must come after them, or the window would end their time too early
    conn = FakeConnection(now=at(0), clock=[70.0], statement_time=1.0)
    conn.first_seen[("7001", 2)] = at(-4)
    watch = IdentityWatch(monotonic=lambda: conn.clock[0])
    watch._connected(conn, None)
    assert watch.age is not None and watch.age.measured == 73.0


def test_an_unreadable_age_on_the_first_timeline_is_no_failover() -> None:
    """A schema older than the timeline table (it refuses sync scripts until `db upgrade`)
    on a server that was never promoted: after the upgrade, no window to wait out."""
    watch = IdentityWatch(monotonic=lambda: 70.0)
    conn = FakeConnection(now=at(0), no_table=True, timeline="00000001")
    watch._connected(conn, None)
    assert watch.age is not None and math.isinf(watch.age.elapsed)
    assert not FailoverGate(watch, lambda: 15.0, lambda: 70.0).closed(70.0)

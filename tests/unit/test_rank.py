"""Who of the fleet asks for a sync lease (daemons/fleet/rank.py, DbLeases.turn): pure logic and
the gate's decisions, driven with plain numbers and a fake database side."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet import rank
from pandaserver.daemons.fleet.dbleases import DbLeases, Seen, wait_from
from pandaserver.daemons.fleet.failover import FailoverGate
from pandaserver.daemons.fleet.leasemanager import Turn
from pandaserver.db.stores.heartbeat import ServerRow
from pandaserver.db.stores.leases import LeaseRow

SERVERS = [f"srv{i:02d}" for i in range(16)]
SCRIPTS = [f"sync{i:03d}" for i in range(1000)]


def test_every_script_has_one_preferred_server_and_each_rank_once() -> None:
    for script in SCRIPTS[:200]:
        ranks = sorted(rank.rank(script, me, SERVERS) for me in SERVERS)
        assert ranks == list(range(len(SERVERS)))


def test_preference_is_spread_over_the_servers() -> None:
    preferred = Counter(rank.order(script, SERVERS[:4])[0] for script in SCRIPTS)
    assert set(preferred) == set(SERVERS[:4])
    assert all(150 <= n <= 350 for n in preferred.values()), preferred


def test_a_server_joining_takes_scripts_and_moves_no_other() -> None:
    before = {s: rank.order(s, SERVERS[:4])[0] for s in SCRIPTS}
    after = {s: rank.order(s, SERVERS[:5])[0] for s in SCRIPTS}
    moved = [s for s in SCRIPTS if before[s] != after[s]]
    assert moved and all(after[s] == SERVERS[4] for s in moved)
    assert len(moved) < len(SCRIPTS) / 3


def test_a_server_counts_itself_whatever_the_list_says() -> None:
    assert rank.rank("x", "me", []) == 0
    assert rank.rank("x", "me", ["me", "me"]) == 0


@pytest.mark.parametrize("period", [0.2, 1.0, 1.25, 10.0, 60.0, 3600.0])
def test_every_fallback_looks_within_half_a_period(period: float) -> None:
    offsets = [rank.fallback_offset(r, period) for r in range(20)]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[1] > 0
    if period >= 1.25:  # reads are at most 4 a second: shorter periods may lose one
        assert offsets[-1] + rank.read_interval(period) <= period / 2 + 1e-9
    assert rank.read_interval(period) >= rank.READ_INTERVAL_MIN


def test_what_a_read_says() -> None:
    assert wait_from(None) is None  # never granted
    assert wait_from(Seen(held=False, due_in=-0.5, expires_in=None)) is None  # ungranted
    assert wait_from(Seen(held=False, due_in=9.0, expires_in=None)) == 9.0  # granted, done
    assert wait_from(Seen(held=True, due_in=9.0, expires_in=20.0)) == 9.0  # still running
    assert wait_from(Seen(held=True, due_in=-3.0, expires_in=5.0)) == 1.0  # an overrun


# ----- the gate, with a fake database side --------------------------------------------------
@dataclass
class FakeFleet:
    server: str = "srv00"
    member: bool = True
    down_since: float | None = None
    settings: Any = field(default_factory=lambda: SimpleNamespace(heartbeat_interval=30.0,
                                                                  lease_ttl=30.0))
    clock: float = 0.0
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    leases: Any = field(default_factory=lambda: SimpleNamespace(list_leases=lambda: []))
    beats: Any = field(default_factory=lambda: SimpleNamespace(list_servers=lambda: []))
    pid: int = 1
    probe_interval: float = 2.0
    at_close: list[Any] = field(default_factory=list)
    failed_releases: list[tuple[str, int]] = field(default_factory=list)
    released: list[tuple[str, int | None]] = field(default_factory=list)  # at once
    # no failover is ever noticed: the gate stays open (tests/unit/test_failover_gate.py)
    gate: FailoverGate = field(default_factory=lambda: FailoverGate(None, lambda: 30.0))
    holder: Any = field(default_factory=lambda: SimpleNamespace(token="t0"))
    listener: Any = None  # PostgreSQL's LISTEN connection (tests/unit/test_grantwatch.py)
    # the history keeper: no run of this fake ended (HistoryKeeper.ended_under)
    keeper: Any = field(default_factory=lambda: SimpleNamespace(ended_under=lambda *a: None))

    def monotonic(self) -> float:
        return self.clock

    def usable(self, now: float) -> bool:
        return self.down_since is None

    def release(self, name: str, generation: int | None, ended: Any = None) -> None:
        self.released.append((name, generation))

    def _submit(self, lane: str, what: str, operation: Any, done: Any,
                timeout: float | None = None) -> None:
        self.calls.append((lane, what, done))

    def answer(self, what: str, result: Any) -> None:
        found = [c for c in self.calls if c[1] == what]
        assert found, f"no {what} call was made"
        self.calls.remove(found[0])
        found[0][2](result, None, False)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


def server_row(name: str) -> ServerRow:
    return ServerRow(server=name, pid=1, version="x", started_at=NOW, last_seen=NOW,
                     config_hash="", db_now=NOW + timedelta(seconds=1))


def lease_row(name: str, due_in: float, expires_in: float | None) -> LeaseRow:
    return LeaseRow(name=name, generation=3, owner_server="x", owner_pid=1, acquired_at=NOW,
                    expires_at=None if expires_in is None else NOW + timedelta(
                        seconds=expires_in), next_due=NOW + timedelta(seconds=due_in),
                    period=10.0, updated_at=NOW, db_now=NOW)


def gate_with(others: list[str]) -> tuple[DbLeases, FakeFleet]:
    fleet = FakeFleet()
    gate = DbLeases(fleet)  # type: ignore[arg-type]
    gate._refresh_servers(0.0)  # what every turn() does first
    fleet.answer("server list", [server_row(s) for s in ["srv00", *others]])
    if others:
        gate._refresh_servers(1.0)  # a list that changed is read again soon: not yet
        assert not fleet.calls
        gate._refresh_servers(2.0)  # now: the same, so the next read is a heartbeat later
        fleet.answer("server list", [server_row(s) for s in ["srv00", *others]])
    gate._refresh_servers(29.0)
    assert not fleet.calls
    return gate, fleet


def script_ranked(gate: DbLeases, wanted: int) -> DaemonSpec:
    name = next(s for s in SCRIPTS if gate.rank(s) == wanted)
    return DaemonSpec(name=name, module="noop", period=10.0, timeout=60.0, sync=True)


def seen_ungranted(gate: DbLeases, fleet: FakeFleet, spec: DaemonSpec) -> Turn:
    """A server that only looks, at its fallback time: its read shows the period (due at
    5.0) ungranted. Returns the turn that asked for that read."""
    turn = gate.turn(spec, 5.0, 5.0)
    turn = gate.turn(spec, turn.at, turn.at)
    fleet.clock = turn.at
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=-1.0, expires_in=None)])
    return turn


def test_the_preferred_server_asks_at_the_due_time() -> None:
    gate, fleet = gate_with(["srv01", "srv02"])
    spec = script_ranked(gate, 0)
    turn = gate.turn(spec, 5.0, 5.0)
    assert turn.ask and turn.due == 5.0 and not fleet.calls


def test_another_server_learns_a_grant_without_asking() -> None:
    gate, fleet = gate_with(["srv01", "srv02"])
    spec = script_ranked(gate, 2)
    check = 5.0 + rank.fallback_offset(2, spec.period)
    turn = gate.turn(spec, 5.0, 5.0)
    assert not turn.ask and turn.at == check and not fleet.calls
    turn = gate.turn(spec, turn.at, check)  # the check: a read of the lease table
    assert not turn.ask and [c[1] for c in fleet.calls] == ["lease-table read"]
    fleet.clock = check + 0.01
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=8.0, expires_in=None)])
    turn = gate.turn(spec, turn.at, check + 0.02)
    assert not turn.ask and turn.learned and turn.at == pytest.approx(check + 8.01)
    assert gate.reads == 1


def test_another_server_asks_when_the_period_looks_ungranted() -> None:
    gate, fleet = gate_with(["srv01", "srv02"])
    spec = script_ranked(gate, 1)
    turn = seen_ungranted(gate, fleet, spec)
    turn = gate.turn(spec, turn.at, turn.at)
    assert turn.ask and turn.due == 5.0  # the original due time: its delay is honest


def test_one_read_serves_every_script_and_reads_are_spaced() -> None:
    gate, fleet = gate_with(["srv01", "srv02", "srv03"])
    specs = [DaemonSpec(name=s, module="noop", period=10.0, timeout=60.0, sync=True) for s in SCRIPTS[:40]
             if gate.rank(s) > 0]
    at = {spec.name: gate.turn(spec, 5.0, 5.0).at for spec in specs}
    late = max(at.values())
    for spec in specs:
        at[spec.name] = gate.turn(spec, at[spec.name], late).at
    assert [c[1] for c in fleet.calls] == ["lease-table read"]
    fleet.clock = late
    fleet.answer("lease-table read", [lease_row(s.name, 7.0, None) for s in specs])
    turns = [gate.turn(spec, at[spec.name], late + 0.1) for spec in specs]
    assert all(t.learned for t in turns) and gate.reads == 1
    # the next due time: a read again, but not before the read interval has passed
    again = [gate.turn(spec, t.at, t.at + 5.0) for spec, t in zip(specs, turns, strict=True)]
    assert all(not t.ask for t in again) and gate.reads == 2


def test_without_other_servers_or_a_database_everyone_asks() -> None:
    gate, fleet = gate_with([])
    assert gate.turn(script_ranked(gate, 0), 1.0, 1.0).ask
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 1)
    fleet.down_since = 0.0
    assert gate.turn(spec, 1.0, 1.0).ask  # an outage: the grant call answers at once
    fleet.down_since, fleet.member = None, False
    assert gate.turn(spec, 1.0, 1.0).ask  # run-once


def test_an_ungranted_period_seen_a_while_ago_is_looked_at_again_before_asking() -> None:
    gate, fleet = gate_with(["srv01", "srv02"])
    spec = script_ranked(gate, 1)
    turn = seen_ungranted(gate, fleet, spec)
    later = fleet.clock + 3.0  # this server's worker was busy meanwhile
    fleet.clock = later
    turn = gate.turn(spec, turn.at, later)
    assert not turn.ask and [c[1] for c in fleet.calls] == ["lease-table read"]
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=9.0, expires_in=None)])
    assert gate.turn(spec, turn.at, later + 0.01).learned  # granted by another meanwhile


def test_a_draining_server_is_not_ranked() -> None:
    from pandaserver.daemons.fleet.dbleases import draining

    assert draining('{"draining": true, "paused": []}')
    assert not draining('{"draining": false}') and not draining(None) and not draining("[")
    gate, fleet = gate_with(["srv01"])
    gate._next_servers = 0.0
    gate._refresh_servers(100.0)
    row = server_row("srv01")
    fleet.answer("server list", [server_row("srv00"), ServerRow(**{
        **row.__dict__, "state": '{"draining": true}'})])
    assert gate.live == frozenset()

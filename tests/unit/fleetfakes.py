"""A fake database side for the lease gate (``DbLeases``): the calls it submits are
answered by the test, on a clock the test sets; and rows and scripts to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet.dbleases import DbLeases
from pandaserver.daemons.fleet.failover import FailoverGate
from pandaserver.db.stores.heartbeat import ServerRow
from pandaserver.db.stores.leases import LeaseRow

SERVERS = [f"srv{i:02d}" for i in range(16)]
SCRIPTS = [f"sync{i:03d}" for i in range(1000)]


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

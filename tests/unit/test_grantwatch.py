"""A fallback server's look settled by a grant it heard (daemons/fleet/grantwatch.py, through
DbLeases.turn), and read as before whenever hearing proves nothing: driven with plain numbers,
the fake database side of test_rank.py and a fake LISTEN connection."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from fleetfakes import FakeFleet, gate_with, lease_row, script_ranked

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet import rank
from pandaserver.daemons.fleet.dbleases import DbLeases
from pandaserver.daemons.fleet.grantwatch import GrantWatch, Known
from pandaserver.daemons.fleet.leasemanager import LeaseDecision, Turn
from pandaserver.daemons.fleet.listener import CommandListener
from pandaserver.db.stores.leasefirings import GRANT_CHANNEL
from pandaserver.db.stores.operator_commands import CHANNEL


@dataclass
class FakeListener:
    """The LISTEN connection: ``watch_grants`` listens again at once; ``read`` hands over
    the notifications that have arrived."""

    grants: GrantWatch | None = None
    arrived: list[str] = field(default_factory=list)
    reconnects: int = 0

    def watch_grants(self, watch: GrantWatch, now: float) -> None:
        self.grants = watch
        self.reconnects += 1
        watch.listening(now)

    def read(self, now: float) -> None:
        assert self.grants is not None
        for payload in self.arrived:
            self.grants.take(payload, now)
        self.arrived.clear()


def grant(name: str, generation: int, due_in: float = 10.0) -> str:
    return json.dumps({"name": name, "generation": generation, "server": "srv01",
                       "due_in": due_in})


def check_of(spec: DaemonSpec, due: float, gate: DbLeases) -> float:
    return due + rank.fallback_offset(gate.rank(spec.name), spec.period)


def watching() -> tuple[DbLeases, FakeFleet, FakeListener, DaemonSpec, Turn]:
    """A rank-1 server on PostgreSQL after its first look: that look started the watch and
    read the lease table as before (generation 3 granted, next due in 8 s)."""
    gate, fleet = gate_with(["srv01", "srv02"])
    listener = fleet.listener = FakeListener()
    spec = script_ranked(gate, 1)
    check = check_of(spec, 5.0, gate)
    turn = gate.turn(spec, 5.0, 5.0)
    fleet.clock = check
    turn = gate.turn(spec, turn.at, check)
    assert listener.reconnects == 1 and [c[1] for c in fleet.calls] == ["lease-table read"]
    fleet.clock = check + 0.01
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=8.0, expires_in=None)])
    turn = gate.turn(spec, turn.at, check + 0.02)
    assert turn.learned and gate.reads == 1
    return gate, fleet, listener, spec, turn


def look(gate: DbLeases, fleet: FakeFleet, spec: DaemonSpec, due: float) -> Turn:
    """The next period's look: deferred to the check time, then made there."""
    turn = gate.turn(spec, due, due)
    assert not turn.ask and not turn.learned
    fleet.clock = turn.at
    return gate.turn(spec, turn.at, turn.at)


def test_a_grant_heard_settles_the_look_without_a_read() -> None:
    gate, fleet, listener, spec, turn = watching()
    due = turn.at
    for generation in (4, 5, 6):  # the preferred server grants each period; all heard
        fleet.clock = due + 0.005
        listener.arrived.append(grant(spec.name, generation, due_in=9.99))
        turn = look(gate, fleet, spec, due)
        assert turn.learned and not turn.ask
        assert turn.at == pytest.approx(gate.watch.heard[spec.name].at + 9.99)
        due = turn.at
    assert gate.reads == 1 and gate.watch.settled == 3
    assert "lease-table read" not in [c[1] for c in fleet.calls]


def test_nothing_heard_reads_as_before() -> None:
    gate, fleet, _, spec, turn = watching()
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


@pytest.mark.parametrize("late", [3, 2])  # the read's own generation, or an older one
def test_a_notification_of_a_grant_already_known_proves_nothing(late: int) -> None:
    gate, fleet, listener, spec, turn = watching()
    listener.arrived.append(grant(spec.name, late))  # arrived after the read that showed 3
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


def test_a_grant_of_another_script_proves_nothing() -> None:
    gate, fleet, listener, spec, turn = watching()
    listener.arrived.append(grant(spec.name + "x", 9))
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


def test_listening_again_after_what_was_known_proves_nothing() -> None:
    gate, fleet, listener, spec, turn = watching()
    gate.watch.deaf()  # the connection ended: a grant may have gone unheard meanwhile
    gate.watch.listening(fleet.clock + 0.5)
    fleet.clock += 0.5
    listener.arrived.append(grant(spec.name, 4))  # heard on the new connection, but the
    turn = look(gate, fleet, spec, turn.at)  # knowledge predates it
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]
    # that read is known after the new connection listened: the chain resumes
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=8.0, expires_in=None)])
    turn = gate.turn(spec, turn.at, fleet.clock + 0.01)
    assert turn.learned
    listener.arrived.append(grant(spec.name, 4))
    assert look(gate, fleet, spec, turn.at).learned and gate.reads == 2


def test_not_listening_reads() -> None:
    gate, fleet, listener, spec, turn = watching()
    gate.watch.deaf()
    listener.arrived.append(grant(spec.name, 4))
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


def test_a_grant_whose_next_period_has_come_too_proves_nothing() -> None:
    gate, fleet, listener, spec, turn = watching()
    listener.arrived.append(grant(spec.name, 4, due_in=0.05))
    listener.read(fleet.clock)  # taken at once: its next due time is long past at the check
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


def test_a_failover_of_the_database_proves_nothing() -> None:
    gate, fleet, listener, spec, turn = watching()
    watch = gate.watch
    listener.arrived.append(grant(spec.name, 4))
    known = watch.known[spec.name]
    watch.known[spec.name] = Known(known.generation, known.at, known.epoch - 1)
    turn = look(gate, fleet, spec, turn.at)
    assert not turn.learned and [c[1] for c in fleet.calls] == ["lease-table read"]


def test_asking_forgets_what_was_known() -> None:
    gate, fleet, listener, spec, turn = watching()
    turn = look(gate, fleet, spec, turn.at)  # nothing heard: a read shows it ungranted
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=-0.1, expires_in=None)])
    turn = gate.turn(spec, turn.at, fleet.clock + 0.01)
    assert turn.ask
    replies: list[LeaseDecision] = []
    gate.acquire(spec, fleet.clock, replies.append)
    listener.arrived.append(grant(spec.name, 4))  # the preferred server, late, won
    fleet.answer("lease", SimpleNamespace(granted=False, generation=None, wait=9.0,
                                          holder="srv01", due_in=None, db_now=None,
                                          firing=None, held_past_due=False))
    assert replies and not replies[0].granted
    # the refusal's wait is its next due time; that grant (4) is not known to be older
    turn = look(gate, fleet, spec, fleet.clock + 9.0)
    assert not turn.learned and fleet.calls[-1][1] == "lease-table read"


def test_its_own_grant_is_what_it_knows_then() -> None:
    gate, fleet, listener, spec, turn = watching()
    turn = look(gate, fleet, spec, turn.at)
    fleet.answer("lease-table read", [lease_row(spec.name, due_in=-0.1, expires_in=None)])
    assert gate.turn(spec, turn.at, fleet.clock + 0.01).ask
    gate.acquire(spec, fleet.clock, lambda decision: None)
    fleet.answer("lease", SimpleNamespace(granted=True, generation=4, wait=0.0, holder="srv00",
                                          due_in=9.9, db_now=None, firing=None,
                                          held_past_due=False))
    listener.arrived.append(grant(spec.name, 4))  # its own grant, heard: proves nothing
    turn = look(gate, fleet, spec, fleet.clock + 9.9)
    assert not turn.learned
    fleet.calls.clear()
    gate._read_sent = None
    listener.arrived.append(grant(spec.name, 5))  # the preferred server's next one does
    assert look(gate, fleet, spec, fleet.clock + 9.9).learned


def test_a_notice_not_understood_is_ignored() -> None:
    watch = GrantWatch()
    watch.listening(0.0)
    for payload in ("", "[]", '{"name": "a"}', '{"name": "a", "generation": "x", "due_in": 1}'):
        watch.take(payload, 1.0)
    assert watch.heard == {} and watch.notices == 4


def test_only_a_command_notification_wakes_the_controls() -> None:
    ours, theirs = socket.socketpair()
    try:
        watch = GrantWatch()
        listener = CommandListener(engine=None, retry_after=1.0)  # type: ignore[arg-type]
        listener.grants = watch
        notifies = [SimpleNamespace(channel=GRANT_CHANNEL, payload=grant("a", 2))]
        listener.conn = SimpleNamespace(notifies=notifies, closed=False, poll=lambda: None,
                                        fileno=ours.fileno)
        watch.listening(0.0)
        listener.read(1.0)
        assert not listener.take_wake() and watch.heard["a"].generation == 2
        notifies.append(SimpleNamespace(channel=CHANNEL, payload="17"))
        listener.read(2.0)
        assert listener.take_wake() and listener.notified == 1
        listener.close()  # its end: grants from now on may go unheard
        assert watch.since is None and watch.heard == {}
    finally:
        ours.close()
        theirs.close()


def preferred_after_its_grant(others: list[str]) -> tuple[DbLeases, FakeFleet, FakeListener,
                                                          DaemonSpec]:
    """The preferred server of a script, granted generation 4 at 5.0 (next due in 10 s)."""
    gate, fleet = gate_with(others)
    listener = fleet.listener = FakeListener()
    spec = script_ranked(gate, 0)
    fleet.clock = 5.0
    assert gate.turn(spec, 5.0, 5.0).ask
    gate.acquire(spec, 5.0, lambda decision: None)
    fleet.answer("lease", SimpleNamespace(granted=True, generation=4, wait=0.0,
                                          holder="srv00", due_in=10.0, db_now=None,
                                          firing=None, held_past_due=False))
    return gate, fleet, listener, spec


def test_a_late_preferred_server_that_heard_another_serve_the_period_does_not_ask() -> None:
    gate, fleet, listener, spec = preferred_after_its_grant(["srv01"])
    assert listener.reconnects == 1  # its first look started the watch
    listener.arrived.append(grant(spec.name, 4))  # its own grant: proves nothing
    fleet.clock = 15.0
    assert gate.turn(spec, 15.0, 15.0).ask
    listener.arrived.append(grant(spec.name, 5, due_in=9.9))  # a fallback served it
    fleet.clock = 15.3  # (this server was late: its ask would only be refused)
    turn = gate.turn(spec, 15.0, 15.3)
    assert not turn.ask and turn.learned and turn.at == pytest.approx(15.3 + 9.9)
    assert "lease-table read" not in [c[1] for c in fleet.calls]


def test_a_master_alone_in_its_fleet_never_listens_for_grants() -> None:
    gate, fleet, listener, spec = preferred_after_its_grant([])
    fleet.clock = 15.0
    assert gate.turn(spec, 15.0, 15.0).ask
    assert listener.grants is None and listener.reconnects == 0


def test_a_connection_opened_before_the_watch_began_is_opened_again() -> None:
    watch = GrantWatch()
    listener = CommandListener(engine=None, retry_after=1.0)  # type: ignore[arg-type]
    closed: list[int] = []
    raw = SimpleNamespace(dbapi_connection=SimpleNamespace(), close=lambda: closed.append(1))
    listener.connecting = True  # its open (LISTEN on commands only) is under way...
    listener.watch_grants(watch, 1.0)  # ...when the first look asks for grants
    listener.opened(raw, None, False, 2.0)
    assert closed and listener.conn is None and listener.wanted(2.0) and watch.since is None
    listener._grants_listened = True  # the next open listened on both channels
    listener.opened(raw, None, False, 3.0)
    assert listener.conn is not None and watch.since == 3.0

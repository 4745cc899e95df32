"""Who of the fleet asks for a sync lease (daemons/fleet/rank.py, DbLeases.turn): pure logic and
the gate's decisions, driven with plain numbers and a fake database side."""

from __future__ import annotations

from collections import Counter

import pytest
from fleetfakes import SCRIPTS, SERVERS, FakeFleet, gate_with, lease_row, script_ranked, server_row

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet import rank
from pandaserver.daemons.fleet.dbleases import DbLeases, Seen, wait_from
from pandaserver.daemons.fleet.leasemanager import Turn
from pandaserver.db.stores.heartbeat import ServerRow


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

"""Deferred lease releases (daemons/fleet/releases.py): a finished lease of the preferred
server is released by its next grant statement, or by one batched release before the next
server would look; at once where anyone could need it sooner. In-process, with the fake
fleet of test_rank.py and an injected clock."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fleetfakes import FakeFleet, gate_with, script_ranked

from pandaserver.daemons.fleet.dbleases import DbLeases
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.daemons.fleet.rank import fallback_offset, release_by
from pandaserver.db.stores.leasegrant import LeaseResult


def granted(gate: DbLeases, fleet: FakeFleet, spec: Any, generation: int,
            due_in: float) -> None:
    """Ask for ``spec``'s lease now and have the database grant ``generation``."""
    replies: list[LeaseDecision] = []
    gate.acquire(spec, fleet.clock, replies.append)
    fleet.answer("lease", LeaseResult(granted=True, generation=generation, wait=0.0,
                                          holder=fleet.server, due_in=due_in, next_due=None,
                                          expires=None))
    assert replies and replies[0].granted


def test_release_by_is_half_way_to_the_next_servers_look() -> None:
    assert release_by(100.0, 10.0, 0, True) == 100.0 + fallback_offset(1, 10.0) / 2
    assert release_by(100.0, 10.0, 0, True) < 100.0 + fallback_offset(1, 10.0)
    assert release_by(100.0, 10.0, 1, True) is None  # a fallback server: at once
    assert release_by(100.0, 10.0, 0, False) is None  # run-once: at once


def test_the_preferred_servers_release_rides_on_its_next_grant() -> None:
    gate, fleet = gate_with(["srv01", "srv02"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    fleet.clock = 31.0
    gate.release(spec.name, 7)
    assert fleet.released == [] and not fleet.calls  # no statement of its own
    assert gate.next_release() == 30.0 + 10.0 + fallback_offset(1, 10.0) / 2
    fleet.clock = 40.0  # due: the next grant names the finished generation
    sent: list[Any] = []
    gate.acquire(spec, fleet.clock, sent.append)
    assert gate.releases.finished == {} and gate.next_release() is None
    # the statement carries it: try_acquire(..., finished=7)
    fleet.answer("lease", LeaseResult(granted=True, generation=8, wait=0.0,
                                          holder=fleet.server, due_in=10.0, next_due=None,
                                          expires=None))
    assert gate.releases.folded == 1 and fleet.released == []


def test_a_refused_grant_releases_the_finished_lease_at_once() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    gate.release(spec.name, 7)
    fleet.clock = 40.0
    gate.acquire(spec, fleet.clock, lambda decision: None)
    fleet.answer("lease", LeaseResult(granted=False, generation=None, wait=1.0,
                                          next_due=None, expires=None, holder="srv01", due_in=None,
                                          held_past_due=False))
    assert fleet.released == [(spec.name, 7)] and gate.releases.folded == 0


def test_without_a_grant_in_time_one_statement_releases_every_due_lease() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    gate.release(spec.name, 7)
    by = gate.next_release()
    assert by is not None
    fleet.clock = by - 0.01
    gate.send_releases(fleet.clock)
    assert not fleet.calls  # not yet
    fleet.clock = by
    gate.send_releases(fleet.clock)
    assert [what for _, what, _ in fleet.calls] == ["release"]
    assert gate.releases.finished == {} and gate.next_release() is None


def test_an_operators_run_now_releases_that_scripts_finished_lease_at_once() -> None:
    """Another server may take the run-now: it must not be refused until the lease
    expires (the deferred release is due only near the next due time)."""
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=3600.0)
    gate.release(spec.name, 7)
    # it expires long before its release would be due: no statement of its own
    assert gate.next_release() is None and not fleet.calls and not fleet.released
    gate.send_releases(fleet.clock, only="another script")
    assert not fleet.calls
    gate.send_releases(fleet.clock, only=spec.name)
    assert [what for _, what, _ in fleet.calls] == ["release"]
    assert gate.releases.finished == {} and gate.releases.expiring == {}
    # one deferred until near its due time: released at once too
    granted(gate, fleet, spec, 8, due_in=10.0)
    gate.release(spec.name, 8)
    assert spec.name in gate.releases.finished
    gate.send_releases(fleet.clock, only=spec.name)
    assert [what for _, what, _ in fleet.calls] == ["release", "release"]
    assert gate.releases.finished == {}


def test_released_at_once_where_another_server_may_need_it_sooner() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 1)  # a fallback's grant: the preferred server asks at due
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    gate.release(spec.name, 7)
    assert fleet.released == [(spec.name, 7)]
    preferred = script_ranked(gate, 0)
    granted(gate, fleet, preferred, 3, due_in=10.0)
    fleet.clock = 41.0  # an overrun: ended after its next due time
    gate.release(preferred.name, 3)
    assert fleet.released[-1] == (preferred.name, 3) and gate.releases.finished == {}


def test_a_lease_that_expires_before_anyone_asks_needs_no_release() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=600.0)  # lease_ttl 30 s, period 10 s asked
    gate.release(spec.name, 7)
    assert fleet.released == [] and gate.releases.finished == {} and not fleet.calls


def test_the_stop_sends_every_deferred_release() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    gate.release(spec.name, 7)
    for hook in fleet.at_close:  # FleetDb.close runs them first
        hook()
    assert [what for _, what, _ in fleet.calls] == ["release"] and gate.releases.finished == {}


def test_while_the_database_is_down_a_release_waits_with_the_failed_ones() -> None:
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    fleet.clock = 30.0
    granted(gate, fleet, spec, 7, due_in=10.0)
    gate.release(spec.name, 7)
    fleet.down_since = 35.0
    gate.send_releases(45.0)
    assert fleet.failed_releases == [(spec.name, 7)] and not fleet.calls


def test_a_refusal_past_due_asks_again_soon_once() -> None:
    """Another server (a rank disagreement, this one draining) finds the lease held past its
    due time: maybe a deferred release, sent within half of rank 1's fallback offset. It
    asks again one offset later, not at the lease's expiry; a second refusal is an
    overrun and waits as the database says."""
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    offset = fallback_offset(1, spec.period)

    def refused(past_due: bool, holder: str = "srv01") -> float:
        replies: list[LeaseDecision] = []
        gate.acquire(spec, fleet.clock, replies.append)
        fleet.answer("lease", LeaseResult(granted=False, generation=None, wait=25.0,
                                              next_due=None, expires=None, holder=holder, due_in=None,
                                              held_past_due=past_due))
        return replies[0].wait

    assert refused(True) == offset
    assert refused(True) == 25.0  # still held: an overrun
    assert refused(False) == 25.0  # a new period
    assert refused(True, holder=fleet.server) == 25.0  # our own lease: no release to wait for
    assert refused(True) == offset


def test_after_a_grant_call_given_up_on_the_next_grant_adopts_what_it_may_have_left() -> None:
    """A grant call abandoned (no answer in time) may have been committed unseen: the next
    grant of that lease is sent with ``adopt`` (LeaseStore.try_acquire), so the master is not
    refused by its own unseen grant until it expires; once granted, no longer."""
    gate, fleet = gate_with(["srv01"])
    spec = script_ranked(gate, 0)
    sent: list[dict[str, Any]] = []
    fleet.leases = SimpleNamespace(try_acquire=lambda *args, **kwargs: sent.append(kwargs))
    operations: list[Any] = []
    submit = fleet._submit

    def recording(lane: str, what: str, operation: Any, done: Any,
                  timeout: float | None = None) -> None:
        operations.append(operation)
        submit(lane, what, operation, done, timeout)

    fleet._submit = recording  # type: ignore[method-assign]

    def ask(outcome: Any, error: BaseException | None = None) -> None:
        gate.acquire(spec, fleet.clock, lambda decision: None)
        _, what, done = fleet.calls.pop()
        assert what == "lease"
        operations.pop()()  # the statement the lane would run: its arguments recorded
        done(outcome, error, False)

    fleet.clock = 30.0
    ask(None, TimeoutError("no answer from the database in 5 s (lease)"))
    assert sent[-1]["adopt"] is False
    fleet.clock = 40.0
    ask(LeaseResult(granted=True, generation=9, wait=0.0, holder=fleet.server, due_in=10.0,
                    next_due=None, expires=None))
    assert sent[-1]["adopt"] is True  # the call after the one given up on
    gate.release(spec.name, 9)
    fleet.clock = 50.0
    ask(LeaseResult(granted=True, generation=10, wait=0.0, holder=fleet.server, due_in=10.0,
                    next_due=None, expires=None))
    assert sent[-1]["adopt"] is False  # granted since: nothing left to adopt

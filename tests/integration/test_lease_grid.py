"""Leases on the fleet-wide grid (kept by a grant on time, counted from a late one),
refusals counted on the lease row, and what a refused server learns from the same
statement, on SQLite, PostgreSQL and MariaDB (``db_engine``, ``db_url``)."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import URL, Engine, select, update

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.stores.leasegrant import LeaseResult
from pandaserver.db.stores.leases import LeaseStore

# clocks of two statements a few milliseconds apart (a loaded machine: generous)
SLACK = 1.0


@pytest.fixture
def store(db_engine: Engine) -> LeaseStore:
    return LeaseStore(db_engine)


def _row(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(daemon_lease).where(daemon_lease.c.name == name)).one()


def _shift(engine: Engine, name: str, back: float, *, release: bool = True) -> Any:
    """Move the lease's times ``back`` seconds into the past (as if that much time had
    passed), releasing it; the row as it now is."""
    row = _row(engine, name)
    delta = timedelta(seconds=back)
    with engine.begin() as conn:
        conn.execute(update(daemon_lease).where(daemon_lease.c.name == name).values(
            next_due=row.next_due - delta, acquired_at=row.acquired_at - delta,
            expires_at=None if release else row.expires_at - delta))
    return _row(engine, name)


def _due_in(engine: Engine, name: str) -> float:
    """Seconds from the database's clock now to the lease's ``next_due``."""
    with engine.connect() as conn:
        now = db_now(conn)
    return (_row(engine, name).next_due - now).total_seconds()


def _on_grid(point: datetime, anchor: datetime, period: float) -> bool:
    steps = (point - anchor) / timedelta(seconds=period)
    return steps == int(steps)


def test_a_first_grant_is_due_one_period_later_and_says_so(store: LeaseStore) -> None:
    won = store.try_acquire("x", "srv-a", 1, period=100, ttl=30)
    assert won.granted and won.due_in == pytest.approx(100, abs=1e-3)
    row = _row(store.engine, "x")
    assert won.next_due == row.next_due
    assert (row.next_due - row.acquired_at).total_seconds() == pytest.approx(100, abs=1e-3)
    assert row.contended == 0 and row.contended_by is None and row.contended_at is None


def _granted_in(store: LeaseStore, name: str, period: float) -> float:
    """Grant ``name`` and return seconds from the grant (the database's ``now``) to the new
    ``next_due``, checking that the answer says the same."""
    won = store.try_acquire(name, "srv-b", 2, period=period, ttl=30)
    assert won.granted and won.due_in is not None
    row = _row(store.engine, name)
    assert won.next_due == row.next_due
    assert won.due_in == pytest.approx((row.next_due - row.acquired_at).total_seconds(),
                                       abs=1e-6)
    return won.due_in


@pytest.mark.parametrize("idle", [350.0, 195.8, 130.0],
                         ids=["whole-periods-missed", "grid-point-4.2s-after", "late-30s"])
def test_a_grant_after_an_idle_gap_is_due_a_period_later_less_the_tolerance(
        store: LeaseStore, idle: float) -> None:
    """The whole fleet was down for a while (the database clock moved on ``idle`` seconds
    since the last grant): the next grant is due one period after it, less the tolerance
    (1 s for 100 s), wherever the old grid would have put it (50 s, 4.2 s, 70 s later)."""
    assert store.try_acquire("x", "srv-a", 1, period=100, ttl=30).granted
    _shift(store.engine, "x", idle)
    assert _granted_in(store, "x", 100) == pytest.approx(100 - 1, abs=1e-3), \
        "the next run would be closer to this one than the period less the tolerance"


def test_a_grant_late_by_at_most_the_tolerance_keeps_the_grid(store: LeaseStore) -> None:
    assert store.try_acquire("x", "srv-a", 1, period=100, ttl=30).granted
    due = _shift(store.engine, "x", 100.5)  # due 0.5 s ago (tolerance: 1 s)
    won = store.try_acquire("x", "srv-b", 2, period=100, ttl=30)
    assert won.granted and won.next_due == due.next_due + timedelta(seconds=100)
    assert won.due_in is not None and 99.5 - SLACK < won.due_in <= 99.5


def test_after_a_late_grant_on_time_grants_keep_its_new_grid(store: LeaseStore) -> None:
    assert store.try_acquire("x", "srv-a", 1, period=10, ttl=30).granted
    _shift(store.engine, "x", 14)  # due 4 s ago: counted from this grant, 9 s on
    assert _granted_in(store, "x", 10) == pytest.approx(9, abs=1e-3)
    for _ in range(3):  # then each 0.3 s late (tolerance: 1 s): one period due to due
        row = _row(store.engine, "x")
        due = _shift(store.engine, "x", (row.next_due - row.acquired_at).total_seconds() + 0.3)
        won = store.try_acquire("x", "srv-a", 1, period=10, ttl=30)
        assert won.granted and won.next_due == due.next_due + timedelta(seconds=10)


def test_a_grant_just_on_time_is_one_period_later(store: LeaseStore) -> None:
    assert store.try_acquire("x", "srv-a", 1, period=7.5, ttl=30).granted
    due = _shift(store.engine, "x", 7.5)  # due exactly now-ish: never a burst of two
    won = store.try_acquire("x", "srv-a", 1, period=7.5, ttl=30)
    assert won.granted and won.next_due is not None
    assert won.next_due == due.next_due + timedelta(seconds=7.5)
    assert _on_grid(won.next_due, due.next_due, 7.5)


def test_a_grant_by_a_shortened_period_restarts_the_grid_at_now(store: LeaseStore) -> None:
    """Due by ``acquired_at + period`` (the period shortened by a reload), not by
    ``next_due``: the grid restarts at now + period."""
    assert store.try_acquire("x", "srv-a", 1, period=86400, ttl=30).granted
    _shift(store.engine, "x", 10)  # next_due still ~a day ahead
    won = store.try_acquire("x", "srv-b", 2, period=2.5, ttl=30)
    assert won.granted and won.due_in == pytest.approx(2.5, abs=1e-6)
    row = _row(store.engine, "x")
    assert (row.next_due - row.acquired_at).total_seconds() == pytest.approx(2.5, abs=1e-6)


def test_refusals_are_counted_on_the_row_naming_the_refused_server(store: LeaseStore) -> None:
    won = store.try_acquire("x", "srv-a", 1, period=60, ttl=60)
    assert won.granted
    answers = [store.try_acquire("x", who, 2, period=60, ttl=60)
               for who in ("srv-b", "srv-b", "srv-c")]
    assert not any(a.granted for a in answers)
    assert all(a.holder == "srv-a" and a.next_due == won.next_due for a in answers)
    assert all(a.due_in is None and a.generation is None for a in answers)
    row = _row(store.engine, "x")
    assert row.contended == 3 and row.contended_by == "srv-c"
    assert row.contended_at is not None and row.contended_at >= row.acquired_at
    # a refusal changes nothing else
    assert (row.generation, row.owner_server, row.next_due) == (1, "srv-a", won.next_due)
    # a grant leaves the counters alone
    assert store.release("x", 1)
    _shift(store.engine, "x", 60)
    assert store.try_acquire("x", "srv-b", 2, period=60, ttl=60).granted
    after = _row(store.engine, "x")
    assert (after.contended, after.contended_by, after.contended_at) == \
        (3, "srv-c", row.contended_at)


def test_a_refused_server_waits_for_its_own_shorter_period(store: LeaseStore) -> None:
    assert store.try_acquire("x", "srv-a", 1, period=100, ttl=30).granted
    assert store.release("x", 1)
    lost = store.try_acquire("x", "srv-b", 2, period=5, ttl=30)
    assert not lost.granted and lost.holder is None
    assert 5 - SLACK < lost.wait <= 5
    assert _row(store.engine, "x").contended == 1


# --- the race: what every refused server learns ------------------------------------------

CONTENDERS = 12
ROUNDS = 6
TRIES = 3  # per contender and round, back to back
PERIOD, TTL = 60.0, 60.0


def _slow_grants(engine: Engine) -> None:
    """Hold every grant's row lock a while before it commits (a trigger, test database
    only), so the other contenders' statements all start, and take their snapshots, while
    the winner is still in progress: a refusal that read its snapshot instead of the newest
    row would see the lease as it was before the race."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION slow_grant() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$")
        conn.exec_driver_sql(
            "CREATE TRIGGER slow_grant BEFORE UPDATE ON daemon_lease FOR EACH ROW"
            " WHEN (NEW.generation <> OLD.generation) EXECUTE FUNCTION slow_grant()")


@dataclass(frozen=True)
class Answer:
    round: int
    who: str
    result: LeaseResult


def test_racing_servers_get_one_grant_per_due_time_and_learn_the_winner(db_url: URL) -> None:
    """Many connections hammer the same due lease at once, round after round: exactly one
    grant per due time, on the grid, and every refusal names the winner and its new due
    time (never the row as it was before the race), and is counted once."""
    setup = engine_from_url(db_url)
    upgrade(setup)
    if setup.dialect.name == "postgresql":
        _slow_grants(setup)
    anchors: dict[int, datetime | None] = {}
    rounds = iter(range(ROUNDS))

    def make_due() -> None:  # run by one contender while all wait at the barrier
        rnd = next(rounds)
        with setup.connect() as conn:
            exists = conn.execute(select(daemon_lease.c.name)).first() is not None
        # round 0 races on the insert; later rounds on a lease made due (and released),
        # on time (0.25 s ago; the tolerance is 1 s): the grant keeps the grid
        anchors[rnd] = _shift(setup, "race", _due_in(setup, "race") + 0.25).next_due \
            if exists else None

    barrier = threading.Barrier(CONTENDERS, action=make_due)
    answers: queue.Queue[Answer] = queue.Queue()
    errors: list[BaseException] = []

    def contend(who: str) -> None:
        engine = engine_from_url(db_url)
        try:
            store = LeaseStore(engine)
            for rnd in range(ROUNDS):
                barrier.wait(timeout=60)
                for _ in range(TRIES):
                    answers.put(Answer(rnd, who, store.try_acquire("race", who, 1, PERIOD, TTL)))
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()
        finally:
            engine.dispose()

    threads = [threading.Thread(target=contend, args=(f"s{i:02d}",)) for i in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not errors, errors
        got = [answers.get_nowait() for _ in range(answers.qsize())]
        assert len(got) == CONTENDERS * ROUNDS * TRIES
        for rnd in range(ROUNDS):
            this = [a for a in got if a.round == rnd]
            grants = [a for a in this if a.result.granted]
            assert len(grants) == 1, f"round {rnd}: {len(grants)} grants"
            (win,) = grants
            assert win.result.generation == rnd + 1
            due = win.result.next_due
            assert due is not None and win.result.due_in is not None
            assert 0 < win.result.due_in <= PERIOD
            anchor = anchors[rnd]
            if anchor is not None:
                assert _on_grid(due, anchor, PERIOD), f"round {rnd}: off the grid"
            stale = [(a.who, a.result.holder, a.result.next_due) for a in this
                     if not a.result.granted
                     and (a.result.holder != win.who or a.result.next_due != due)]
            assert not stale, (f"round {rnd}: refusals that did not learn the winner"
                               f" {win.who} due {due}: {stale}")
            # a refusal's clock is its statement's start, which may precede the winner's
            # (it then waited for the winner's row lock): its wait may exceed TTL a little
            refused = [(a.who, a.result.wait) for a in this if not a.result.granted]
            assert all(TTL - 10 < wait <= TTL + 1 for _, wait in refused), refused
        refusals = sum(1 for a in got if not a.result.granted)
        assert _row(setup, "race").contended == refusals
    finally:
        setup.dispose()

"""A cron script's lease, on every backend: granted once per firing, judged on the
database's clock (a firing not yet come, or whose successor has come, is refused), a new
schedule starting with its next firing, and racers for one firing getting one grant."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from pandaserver.db.base.servertime import db_now
from pandaserver.db.stores.leases import LeaseStore


@pytest.fixture
def store(db_engine: Engine) -> LeaseStore:
    return LeaseStore(db_engine)


def now_of(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return db_now(conn)


def ask(store: LeaseStore, firing: datetime, server: str = "srv-a", ttl: float = 60,
        step: float = 60):
    return store.try_acquire("nightly", server, 1, period=step, ttl=ttl, firing=firing,
                             next_firing=firing + timedelta(seconds=step))


def test_each_firing_is_granted_once_and_a_new_schedule_starts_after_now(
        store: LeaseStore, db_engine: Engine) -> None:
    now = now_of(db_engine)
    # the row is made with the database's now as served: a firing before it is not run
    first = ask(store, now - timedelta(seconds=30))
    assert not first.granted and first.firing is not None and first.firing >= now
    # a firing that has come since: granted once, whoever asks
    firing = first.firing + timedelta(milliseconds=5)
    while now_of(db_engine) < firing:
        pass
    granted = ask(store, firing)
    assert granted.granted and granted.generation == 1 and granted.firing == firing
    assert granted.next_due == firing + timedelta(seconds=60)
    assert store.release("nightly", 1)
    again = ask(store, firing, server="srv-b")
    assert not again.granted and again.holder is None
    assert again.firing == firing and again.wait == pytest.approx(
        (firing + timedelta(seconds=60) - again.db_now).total_seconds(), abs=1e-3)
    row = store.get("nightly")
    assert row is not None and row.firing == firing and row.generation == 1
    assert row.contended == 2  # the first ask and srv-b's


def test_a_firing_is_judged_on_the_database_clock(store: LeaseStore, db_engine: Engine) -> None:
    made = ask(store, now_of(db_engine) - timedelta(seconds=120)).firing  # served up to now
    assert made is not None
    # a server whose clock is 30 s fast asks for a firing 30 s ahead: not yet, 30 s to wait
    early = ask(store, made + timedelta(seconds=30))
    assert not early.granted and early.holder is None
    assert early.wait == pytest.approx(30, abs=2)
    # a server whose clock is slow asks for a firing whose successor has come: refused,
    # wait 0 (it asks again for the latest firing, learning the database's clock)
    firing = made + timedelta(milliseconds=10)
    while now_of(db_engine) < firing + timedelta(milliseconds=30):
        pass
    behind = ask(store, firing, step=0.02)
    assert not behind.granted and behind.wait == 0 and behind.db_now is not None


def test_a_held_lease_is_not_granted_for_the_next_firing_until_it_expires(
        store: LeaseStore, db_engine: Engine) -> None:
    made = ask(store, now_of(db_engine) - timedelta(seconds=1)).firing  # served up to now
    assert made is not None
    f1 = made + timedelta(milliseconds=20)
    while now_of(db_engine) < f1 + timedelta(milliseconds=60):
        pass
    first = store.try_acquire("nightly", "srv-a", 1, period=0.05, ttl=60, firing=f1,
                              next_firing=f1 + timedelta(milliseconds=50))
    assert not first.granted  # its successor came: f1 is gone, never run late in a burst
    f2 = f1 + timedelta(milliseconds=50)
    got = store.try_acquire("nightly", "srv-a", 1, period=10, ttl=60, firing=f2,
                            next_firing=f2 + timedelta(seconds=10))
    assert got.granted
    f3 = f2 + timedelta(seconds=10)
    held = store.try_acquire("nightly", "srv-b", 2, period=10, ttl=60, firing=f3,
                             next_firing=f3 + timedelta(seconds=10))
    assert not held.granted and held.holder == "srv-a" and held.wait > 50


def test_racers_for_one_firing_get_one_grant(db_engine: Engine) -> None:
    now = now_of(db_engine)
    made = LeaseStore(db_engine).try_acquire("race", "setup", 1, period=60, ttl=60,
                                             firing=now - timedelta(seconds=1),
                                             next_firing=now + timedelta(seconds=59)).firing
    assert made is not None
    firing = made + timedelta(milliseconds=50)
    while now_of(db_engine) < firing:
        pass
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(who: str) -> None:
        store = LeaseStore(db_engine)
        barrier.wait(timeout=30)
        results.append(store.try_acquire("race", who, 1, period=60, ttl=60, firing=firing,
                                          next_firing=firing + timedelta(seconds=60)).granted)

    threads = [threading.Thread(target=race, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * 7 + [True]

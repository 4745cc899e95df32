"""A finished lease released by its holder's next grant statement (``finished`` in
``LeaseStore.try_acquire``) and by one batched release (``release_many``), on every backend;
a holder that never comes back to release (it crashed) blocks nobody past the lease's
expiry."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from pandaserver.db.base.servertime import db_now
from pandaserver.db.stores.leases import Holder, LeaseStore


@pytest.fixture
def store(db_engine: Engine) -> LeaseStore:
    return LeaseStore(db_engine)


def wait_due(store: LeaseStore, name: str) -> None:
    row = store.get(name)
    assert row is not None
    time.sleep(max(0.0, row.due_in) + 0.01)  # the database's due time, then a hair


def test_the_holders_next_grant_releases_its_finished_generation(store: LeaseStore) -> None:
    first = store.try_acquire("fold", "srv-a", 11, period=0.3, ttl=60)
    assert first.granted and first.generation is not None
    wait_due(store, "fold")
    # still held (no release was sent): without naming it, the holder is refused too
    assert not store.try_acquire("fold", "srv-a", 11, period=0.3, ttl=60).granted
    again = store.try_acquire("fold", "srv-a", 11, period=0.3, ttl=60,
                              finished=first.generation)
    assert again.granted and again.generation == first.generation + 1
    row = store.get("fold")
    assert row is not None and row.held and row.generation == again.generation


def test_a_finished_generation_frees_only_its_own_holders_lease(store: LeaseStore) -> None:
    first = store.try_acquire("own", "srv-a", 11, period=0.3, ttl=60)
    assert first.generation is not None
    wait_due(store, "own")
    for server, pid, generation in (("srv-b", 11, first.generation),  # another server
                                    ("srv-a", 12, first.generation),  # another master
                                    ("srv-a", 11, first.generation - 1)):  # an older one
        assert not store.try_acquire("own", server, pid, period=0.3, ttl=60,
                                     finished=generation).granted
    row = store.get("own")
    assert row is not None and row.generation == first.generation and row.held


def test_one_statement_releases_several_and_skips_a_stale_generation(
        store: LeaseStore) -> None:
    a = store.try_acquire("a", "srv-a", 1, period=60, ttl=60)
    b = store.try_acquire("b", "srv-a", 1, period=60, ttl=60)
    assert a.generation is not None and b.generation is not None
    assert store.release_many([("a", a.generation), ("b", b.generation + 5)]) == 1
    row_a, row_b = store.get("a"), store.get("b")
    assert row_a is not None and not row_a.held and row_a.next_due == a.next_due
    assert row_b is not None and row_b.held


def test_a_crashed_holders_unreleased_lease_is_taken_at_its_expiry(store: LeaseStore) -> None:
    """The holder finished its run, deferred the release and died: the lease is taken
    once it expires (the lease's time to live after the grant, as for a holder that died
    during its run), not later."""
    first = store.try_acquire("crash", "srv-a", 1, period=0.2, ttl=1.5)
    assert first.granted and first.expires is not None
    early = store.try_acquire("crash", "srv-b", 2, period=60, ttl=1.5)
    assert not early.granted and not early.held_past_due  # not due yet
    wait_due(store, "crash")
    refused = store.try_acquire("crash", "srv-b", 2, period=0.2, ttl=1.5)
    assert not refused.granted and refused.holder == "srv-a"
    assert refused.held_past_due  # the refused server asks again soon (dbleases.py)
    row = store.get("crash")
    assert row is not None and row.expires_in is not None
    time.sleep(row.expires_in + 0.05)
    taken = store.try_acquire("crash", "srv-b", 2, period=0.2, ttl=1.5)
    assert taken.granted and taken.generation == first.generation + 1


def test_a_finished_generation_frees_only_the_master_process_that_holds_it(
        store: LeaseStore) -> None:
    """After a failover another master may hold the same generation number under the same
    server and pid: the grant's own-finished term names the holder's token too."""
    first = store.try_acquire("token", "srv-a", 11, period=0.3, ttl=60, token="t-one")
    assert first.generation is not None
    wait_due(store, "token")
    assert not store.try_acquire("token", "srv-a", 11, period=0.3, ttl=60, token="t-two",
                                 finished=first.generation).granted
    assert store.release_many([("token", first.generation)],
                              Holder("srv-a", 11, "t-two")) == 0
    again = store.try_acquire("token", "srv-a", 11, period=0.3, ttl=60, token="t-one",
                              finished=first.generation)
    assert again.granted and again.generation == first.generation + 1


def test_a_cron_firings_grant_releases_the_holders_finished_generation(
        store: LeaseStore, db_engine: Engine) -> None:
    step = timedelta(seconds=2)

    def ask(firing: datetime, **kwargs: Any) -> Any:
        return store.try_acquire("nightly", "srv-a", 11, period=2, ttl=60, firing=firing,
                                 next_firing=firing + step, token="t", **kwargs)

    def reached(moment: datetime) -> None:  # the database's clock, not this one
        while True:
            with db_engine.connect() as conn:
                if db_now(conn) >= moment:
                    return
            time.sleep(0.01)

    with db_engine.connect() as conn:
        now = db_now(conn)
    served = ask(now).firing  # the row is made, served up to the database's now
    assert served is not None
    firing = served + timedelta(milliseconds=50)
    reached(firing)
    first = ask(firing)
    assert first.granted and first.generation is not None
    following = firing + step  # its run finished; the release was deferred, never sent
    reached(following)
    assert not ask(following).granted
    taken = ask(following, finished=first.generation)
    assert taken.granted and taken.generation == first.generation + 1


def test_a_grant_its_master_gave_up_on_is_adopted_by_that_masters_next_grant(
        store: LeaseStore) -> None:
    """A grant committed while its master had given up on the call (the database frozen or
    cut off mid-call): the master never learnt the generation. Its next grant, sent with
    ``adopt``, takes it at the due time instead of being refused by it until it expires;
    nobody else's grant may."""
    unseen = store.try_acquire("adopt", "srv-a", 11, period=0.3, ttl=60, token="tok-a")
    assert unseen.granted and unseen.generation is not None
    wait_due(store, "adopt")
    for server, pid, token in (("srv-a", 11, "tok-b"),  # another master process, same pid
                               ("srv-a", 11, None),  # no token: never adopts
                               ("srv-b", 11, "tok-a"),  # another server
                               ("srv-a", 12, "tok-a")):  # another pid
        assert not store.try_acquire("adopt", server, pid, period=0.3, ttl=60, token=token,
                                     adopt=True).granted, (server, pid, token)
    # without adopt its own master is refused by it too (until it expires)
    assert not store.try_acquire("adopt", "srv-a", 11, period=0.3, ttl=60,
                                 token="tok-a").granted
    again = store.try_acquire("adopt", "srv-a", 11, period=0.3, ttl=60, token="tok-a",
                              adopt=True)
    assert again.granted and again.generation == unseen.generation + 1
    row = store.get("adopt")
    assert row is not None and row.held and row.generation == again.generation

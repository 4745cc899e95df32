"""Leases on a real database: SQLite, PostgreSQL and MariaDB (``db_engine``); the
multi-process race on the servers (PostgreSQL and MariaDB)."""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import URL, Engine, event

from pandaserver.commands.database import cmd_locks, cmd_unlock
from pandaserver.config import PandaConfig
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now_plus
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.stores.leasegrant import LeaseResult
from pandaserver.db.stores.leases import Holder, LeaseStore
from pandaserver.exitcodes import RET_FAILED

# clocks of two statements a few milliseconds apart; SQLite's 'now' has millisecond steps
SLACK = 1.0


def wait_until(condition: Callable[[], Any], deadline: float, poll: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy or ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value or time.monotonic() >= end:
            return value
        time.sleep(poll)


@pytest.fixture
def store(db_engine: Engine) -> LeaseStore:
    return LeaseStore(db_engine)


def test_first_acquire_grants_generation_one_with_db_times(store: LeaseStore) -> None:
    result = store.try_acquire("sweeper", "srv-a", 101, period=100, ttl=15)
    assert result.granted and result.generation == 1 and result.wait == 0.0
    assert result.holder == "srv-a"
    row = store.get("sweeper")
    assert row is not None and row.held
    assert row.owner_server == "srv-a" and row.owner_pid == 101
    assert row.acquired_at is not None and result.next_due == row.next_due
    # both deadlines come from the same database 'now' of the one statement
    assert (row.next_due - row.acquired_at).total_seconds() == pytest.approx(100, abs=1e-3)
    assert result.expires == row.expires_at and row.expires_at is not None
    assert (row.expires_at - row.acquired_at).total_seconds() == pytest.approx(15, abs=1e-3)
    assert 0 <= (row.db_now - row.acquired_at).total_seconds() < SLACK


def test_losing_while_held_waits_for_the_later_of_expiry_and_next_due(store: LeaseStore) -> None:
    store.try_acquire("x", "srv-a", 1, period=1, ttl=60)
    lost = store.try_acquire("x", "srv-b", 2, period=1, ttl=60)
    assert not lost.granted and lost.generation is None
    assert lost.holder == "srv-a"
    assert 60 - SLACK < lost.wait <= 60


def test_losing_after_release_waits_for_next_due_and_names_no_holder(store: LeaseStore) -> None:
    won = store.try_acquire("x", "srv-a", 1, period=100, ttl=15)
    assert won.generation is not None and store.release("x", won.generation)
    lost = store.try_acquire("x", "srv-b", 2, period=100, ttl=15)
    assert not lost.granted and lost.holder is None and lost.expires is None
    assert 100 - SLACK < lost.wait <= 100  # the period counts from the start, not the release


def test_due_but_still_held_is_not_granted(store: LeaseStore) -> None:
    store.try_acquire("x", "srv-a", 1, period=0, ttl=30)
    lost = store.try_acquire("x", "srv-b", 2, period=0, ttl=30)
    assert not lost.granted and lost.holder == "srv-a"
    assert 30 - SLACK < lost.wait <= 30


def test_release_then_due_grants_the_next_generation(store: LeaseStore) -> None:
    first = store.try_acquire("x", "srv-a", 1, period=0, ttl=30)
    assert first.generation == 1 and store.release("x", 1)
    second = store.try_acquire("x", "srv-b", 2, period=0, ttl=30)
    assert second.granted and second.generation == 2 and second.holder == "srv-b"


def _unchanged(before: Any, after: Any) -> bool:
    fields = ("generation", "owner_server", "owner_pid", "acquired_at", "expires_at",
              "next_due", "updated_at")
    return all(getattr(before, f) == getattr(after, f) for f in fields)


def test_expiry_frees_it_and_a_stale_release_changes_nothing(store: LeaseStore) -> None:
    # 2 s: the second statement comes well within it even on a loaded machine
    first = store.try_acquire("x", "srv-a", 1, period=0, ttl=2.0)
    assert first.granted
    started = time.monotonic()
    early = store.try_acquire("x", "srv-b", 2, period=0, ttl=30)
    assert not early.granted and early.holder == "srv-a" and 0 < early.wait <= 2.0
    result: LeaseResult = wait_until(
        lambda: (r := store.try_acquire("x", "srv-b", 2, period=0, ttl=30)).granted
        and r, deadline=10)
    assert result and result.generation == 2, "the expired lease was never granted"
    # not before it expired (DB and local clocks agree; the margin: ``started`` was read a
    # moment after the grant)
    assert time.monotonic() - started >= 2.0 - 0.5
    before = store.get("x")
    assert not store.release("x", 1), "a stale generation must not release"
    assert not store.renew("x", 1, 60), "a stale generation must not renew"
    after = store.get("x")
    assert before is not None and after is not None and after.held
    assert _unchanged(before, after) and after.owner_server == "srv-b"


def test_renew_extends_only_the_current_generation(store: LeaseStore) -> None:
    store.try_acquire("x", "srv-a", 1, period=0, ttl=5)
    assert store.renew("x", 1, 120)
    row = store.get("x")
    assert row is not None and row.expires_in is not None
    assert 120 - SLACK < row.expires_in <= 120
    assert not store.renew("x", 2, 500)
    again = store.get("x")
    assert again is not None and again.expires_at == row.expires_at


def test_renew_after_release_is_refused(store: LeaseStore) -> None:
    store.try_acquire("x", "srv-a", 1, period=0, ttl=5)
    assert store.release("x", 1)
    assert not store.renew("x", 1, 60)
    row = store.get("x")
    assert row is not None and row.expires_at is None and not row.held


def test_force_release_fences_the_old_generation(store: LeaseStore) -> None:
    store.try_acquire("x", "srv-a", 7, period=0, ttl=660)
    released = store.force_release("x")
    assert released is not None and released.held
    assert released.generation == 1 and released.owner_server == "srv-a"
    assert released.owner_pid == 7
    now = store.get("x")
    assert now is not None and now.generation == 2 and now.expires_at is None
    assert not store.release("x", 1) and not store.renew("x", 1, 60)
    taken = store.try_acquire("x", "srv-b", 8, period=0, ttl=60)
    assert taken.granted and taken.generation == 3


def test_force_release_of_unknown_lease_is_none(store: LeaseStore) -> None:
    assert store.force_release("nope") is None
    assert store.list_leases() == []


def test_list_leases_sorted_with_state(store: LeaseStore) -> None:
    store.try_acquire("b-held", "srv-a", 1, period=10, ttl=60)
    store.try_acquire("a-free", "srv-b", 2, period=10, ttl=60)
    store.release("a-free", 1)
    leases = store.list_leases()
    assert [lease.name for lease in leases] == ["a-free", "b-held"]
    assert [lease.held for lease in leases] == [False, True]
    assert all(10 - SLACK < lease.due_in <= 10 for lease in leases)


@pytest.mark.parametrize(
    ("period", "ttl"), [(-1, 1), (1, float("nan")), (1, float("inf"))]
)
def test_bad_arguments_are_refused(store: LeaseStore, period: float, ttl: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        store.try_acquire("x", "srv", 1, period, ttl)


def test_a_shorter_period_in_force_is_honoured_at_the_next_grant(store: LeaseStore) -> None:
    """A reload that shortens the period (here 1 day -> 0.2 s) must not wait out the old one."""
    assert store.try_acquire("x", "srv-a", 1, period=86400, ttl=60).granted
    assert store.release("x", 1)
    old = store.try_acquire("x", "srv-b", 2, period=86400, ttl=60)
    assert not old.granted and old.wait > 86000, "the old period still rules a server that has it"
    new = wait_until(lambda: (r := store.try_acquire("x", "srv-b", 2, period=0.2, ttl=60)).granted
                     and r, deadline=10)
    assert new and new.generation == 2, "the shorter period in force was not honoured"


def test_renew_many_renews_only_current_generations(store: LeaseStore) -> None:
    store.try_acquire("a", "srv-a", 1, period=0, ttl=5)
    store.try_acquire("b", "srv-a", 1, period=0, ttl=5)
    assert store.renew_many([("a", 1), ("b", 7)], 120) == {"a"}
    rows = {row.name: row for row in store.list_leases()}
    assert rows["a"].expires_in is not None and rows["a"].expires_in > 100
    assert rows["b"].expires_in is not None and rows["b"].expires_in < 10


def test_a_generation_granted_again_after_a_lost_grant_is_not_the_old_holders(
        store: LeaseStore) -> None:
    """A standby promoted before it received A's grant of generation 2 shows generation 1,
    expired: B is granted generation 2 there. A's renewal and release, naming the same
    generation, must change nothing of B's lease (they name their holder too)."""
    a, b = Holder("srv-a", 11, "a" * 32), Holder("srv-b", 22, "b" * 32)
    assert store.try_acquire("x", "srv-x", 9, period=0, ttl=5).generation == 1
    store.release("x", 1)
    assert store.try_acquire("x", a.server, a.pid, period=0, ttl=60, token=a.token).generation == 2
    assert store.renew_many([("x", 2)], 60, a) == {"x"}
    t = daemon_lease
    with store.engine.begin() as conn:  # the promoted standby's view: A's grant never came
        conn.execute(t.update().where(t.c.name == "x").values(
            generation=1, owner_server="srv-x", owner_pid=9, owner_token=None,
            expires_at=db_now_plus(-1), next_due=db_now_plus(-1)))
    assert store.try_acquire("x", b.server, b.pid, period=0, ttl=60, token=b.token).generation == 2
    assert store.renew_many([("x", 2)], 600, a) == set()
    assert not store.release("x", 2, a)
    row = store.get("x")
    assert row is not None and row.held and row.owner_server == "srv-b"
    assert row.expires_in is not None and row.expires_in <= 60
    assert store.renew_many([("x", 2)], 120, b) == {"x"}
    assert store.release("x", 2, b)


def test_a_grant_is_one_statement_and_so_is_a_refusal_on_postgresql(db_engine: Engine) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db_engine, "before_cursor_execute", count)
    dialect = db_engine.dialect.name
    # MySQL/MariaDB: one more, the read-back of what the upsert decided (see upsert.py)
    extra = 1 if dialect == "mysql" else 0
    store = LeaseStore(db_engine)
    assert store.try_acquire("x", "srv-a", 1, period=60, ttl=60).granted
    assert len(statements) == 1 + extra
    first = statements[0].lstrip().upper()
    assert first.startswith("WITH ATTEMPT AS") if dialect == "postgresql" \
        else first.startswith("INSERT")
    statements.clear()
    assert not store.try_acquire("x", "srv-b", 2, period=60, ttl=60).granted
    # SQLite: the refused upsert, then the UPDATE ... RETURNING that counts the refusal
    assert len(statements) == 1 + extra + (dialect == "sqlite")


# --- races ---------------------------------------------------------------------------

ROUNDS = 4


def _race_rounds(url: URL, who: str, barrier: Any, results: Any) -> None:
    """One contender (thread or process): its own engine, ROUNDS synchronized attempts."""
    engine = engine_from_url(url)
    try:
        store = LeaseStore(engine)
        for rnd in range(ROUNDS):
            barrier.wait(timeout=60)
            got = store.try_acquire("race", who, 1, period=0, ttl=60)
            results.put((rnd, who, got.granted, got.generation))
            barrier.wait(timeout=60)  # everyone has tried this round
            if got.granted:  # due again (period 0) once released, before the next round
                assert got.generation is not None
                store.release("race", got.generation)
    finally:
        engine.dispose()


def _check_race(outcomes: list[tuple[int, str, bool, int | None]], contenders: int) -> None:
    assert len(outcomes) == ROUNDS * contenders
    for rnd in range(ROUNDS):
        grants = [o for o in outcomes if o[0] == rnd and o[2]]
        assert len(grants) == 1, f"round {rnd}: {len(grants)} grants: {grants}"
        # round 0 races on the INSERT, the others on the conditional UPDATE
        assert grants[0][3] == rnd + 1


def test_threads_racing_for_a_due_lease_get_exactly_one_grant(db_url: URL) -> None:
    setup = engine_from_url(db_url)
    upgrade(setup)
    setup.dispose()
    contenders = 12
    barrier = threading.Barrier(contenders)
    import queue

    results: queue.Queue[tuple[int, str, bool, int | None]] = queue.Queue()
    errors: list[BaseException] = []

    def run(who: str) -> None:
        try:
            _race_rounds(db_url, who, barrier, results)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    _check_race([results.get_nowait() for _ in range(results.qsize())], contenders)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_processes_racing_get_exactly_one_grant(backend: str,
                                                request: pytest.FixtureRequest) -> None:
    url: URL = request.getfixturevalue("pg_url" if backend == "postgresql" else "mysql_url")
    setup = engine_from_url(url)
    upgrade(setup)
    setup.dispose()  # nothing pooled crosses the fork
    contenders = 16
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(contenders)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_rounds, args=(url, f"p{i}", barrier, results))
             for i in range(contenders)]
    for proc in procs:
        proc.start()
    outcomes = []
    try:
        for _ in range(ROUNDS * contenders):
            outcomes.append(results.get(timeout=60))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * contenders
    _check_race(outcomes, contenders)


# --- CLI: locks and unlock -------------------------------------------------------------

def test_cli_locks_and_unlock(db_engine: Engine, config_for: Callable[..., PandaConfig],
                              capsys: pytest.CaptureFixture[str]) -> None:
    store = LeaseStore(db_engine)
    store.try_acquire("sweeper", "srv-a", 4242, period=300, ttl=660)
    cfg = config_for(db_engine.url)

    assert cmd_locks(cfg, argparse.Namespace(json=True)) == 0
    (lease,) = json.loads(capsys.readouterr().out)
    assert lease["name"] == "sweeper" and lease["held"] and lease["owner_pid"] == 4242

    assert cmd_locks(cfg, argparse.Namespace(json=False)) == 0
    table = capsys.readouterr().out
    assert "sweeper" in table and "held" in table and "srv-a pid 4242" in table

    assert cmd_unlock(cfg, argparse.Namespace(name="sweeper")) == 0
    said = capsys.readouterr().out
    assert "released lease 'sweeper'" in said and "srv-a pid 4242" in said
    assert "generation is now 2" in said
    assert not store.release("sweeper", 1)

    assert cmd_unlock(cfg, argparse.Namespace(name="sweepr")) == RET_FAILED
    err = capsys.readouterr().err
    assert "no lease named 'sweepr'" in err and 'did you mean "sweeper"' in err


def test_a_dropped_connection_is_retried_once_on_a_fresh_one(
    pg_engine: Engine, pg_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    database = pg_engine.url.database

    def drop_connections() -> None:  # what a server restart does to every pooled connection
        pg_cluster._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )

    _check_retry_after_dropped_connections(pg_engine.url, drop_connections, caplog)


def _check_retry_after_dropped_connections(url: URL, drop_connections: Callable[[], None],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """With the master's settings (autocommit, no pre-ping: one round trip per grant), a
    lease statement that meets a dropped connection is retried once on a fresh one."""
    engine = engine_from_url(url, autocommit=True, pre_ping=False)
    try:
        upgrade(engine)
        store = LeaseStore(engine)
        assert store.try_acquire("warm", "srv-a", 1, period=0, ttl=1).granted
        drop_connections()
        with caplog.at_level(logging.INFO, logger="pandaserver.db.stores.leases"):
            result = store.try_acquire("after-restart", "srv-a", 1, period=0, ttl=1)
        assert result.granted and result.generation == 1
        assert "retrying once" in caplog.text
    finally:
        engine.dispose()


def test_a_dropped_connection_is_retried_once_on_mysql(
    mysql_url: URL, mysql_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def drop_connections() -> None:  # what a server restart does to pooled connections
        admin = mysql_server.connect()
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s"
                            " AND id <> CONNECTION_ID()", (mysql_url.database,))
                for (ident,) in cur.fetchall():
                    cur.execute(f"KILL CONNECTION {int(ident)}")
        finally:
            admin.close()

    _check_retry_after_dropped_connections(mysql_url, drop_connections, caplog)


# --- conditional_upsert itself -----------------------------------------------------------

def test_conditional_upsert_grants_an_update_to_identical_values(db_engine: Engine) -> None:
    """On MySQL an update that changes nothing reports 0 affected rows, like a refusal;
    the decision kept by the statement tells them apart."""
    from datetime import UTC, datetime

    from sqlalchemy import false, true

    from pandaserver.db.base.tables import panda_process_lock as t
    from pandaserver.db.base.upsert import conditional_upsert

    when = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    values = {"locked_by": "42", "locked_time": when}
    with db_engine.begin() as conn:

        def upsert(where: Any) -> Any:
            return conditional_upsert(conn, t, {"component": "c", **values}, ["component"],
                                      values, where, [t.c.locked_by, t.c.locked_time])

        inserted, same = upsert(true()), upsert(true())
        assert inserted is not None and (inserted.locked_by, inserted.locked_time) == ("42", when)
        assert same is not None and (same.locked_by, same.locked_time) == ("42", when)
        assert upsert(false()) is None


def test_mysql_refuses_a_connection_that_reports_found_rows(mysql_url: URL) -> None:
    from sqlalchemy import create_engine

    from pandaserver.db.base.upsert import UnsupportedDatabase

    engine = create_engine(mysql_url)  # SQLAlchemy's default asks for CLIENT.FOUND_ROWS
    try:
        upgrade(engine)
        with pytest.raises(UnsupportedDatabase, match="FOUND_ROWS"):
            LeaseStore(engine).try_acquire("x", "srv-a", 1, period=60, ttl=60)
    finally:
        engine.dispose()

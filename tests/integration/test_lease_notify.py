"""PostgreSQL: a lease grant statement notifies ``panda_daemon_grant`` in its own statement
(``grant_announce``), for a period's grant and a cron firing's; a refusal does not, and a
grant that is rolled back is never heard (a notification is delivered only at commit)."""

from __future__ import annotations

import json
import select
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from pandaserver.db.stores.leasefirings import GRANT_CHANNEL
from pandaserver.db.stores.leases import LeaseStore


@pytest.fixture
def listening(pg_engine: Engine) -> Iterator[Any]:
    """A psycopg2 connection that LISTENs on the grant channel."""
    raw = pg_engine.raw_connection()
    dbapi: Any = raw.dbapi_connection
    dbapi.autocommit = True
    with dbapi.cursor() as cursor:
        cursor.execute(f"LISTEN {GRANT_CHANNEL}")
    yield dbapi
    raw.invalidate()


def heard(conn: Any, wait: float) -> list[dict[str, Any]]:
    """The grant notifications that arrive within ``wait`` seconds (all of them: after the
    first, as long as more keep arriving)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
        conn.poll()
        if conn.notifies:
            break
    found = [json.loads(n.payload) for n in conn.notifies if n.channel == GRANT_CHANNEL]
    del conn.notifies[:]
    return found


def test_a_grant_notifies_in_its_own_statement_and_a_refusal_does_not(
        pg_engine: Engine, listening: Any) -> None:
    store = LeaseStore(pg_engine)
    sent: list[str] = []
    from sqlalchemy import event

    event.listen(pg_engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    first = store.try_acquire("notify", "srv-a", 7, period=30, ttl=60)
    assert first.granted and len(sent) == 1  # one statement, the notice included
    [notice] = heard(listening, 5)
    assert notice["name"] == "notify" and notice["generation"] == first.generation
    assert notice["server"] == "srv-a"
    assert first.due_in is not None and notice["due_in"] == pytest.approx(first.due_in)
    assert notice["due_in"] == pytest.approx(30, abs=0.01)
    refused = store.try_acquire("notify", "srv-b", 8, period=30, ttl=60)
    assert not refused.granted
    assert heard(listening, 0.3) == []


def test_a_rolled_back_grant_is_not_heard(pg_engine: Engine, listening: Any) -> None:
    store = LeaseStore(pg_engine)
    store._auto = pg_engine  # a transaction that is never committed: rolled back at close
    assert store.try_acquire("undone", "srv-a", 7, period=30, ttl=60).granted
    assert heard(listening, 0.5) == []
    assert store.get("undone") is None  # the grant itself was rolled back with it
    committed = LeaseStore(pg_engine).try_acquire("undone", "srv-a", 7, period=30, ttl=60)
    assert committed.granted
    assert [n["generation"] for n in heard(listening, 5)] == [committed.generation]


def test_a_firing_grant_notifies(pg_engine: Engine, listening: Any) -> None:
    store = LeaseStore(pg_engine)

    def ask(firing: datetime) -> Any:
        return store.try_acquire("cron", "srv-b", 8, period=60, ttl=60, token="t",
                                 firing=firing, next_firing=firing + timedelta(seconds=60))

    # the first ask makes the row (its schedule starts with the next firing): refused
    assert not ask(datetime.now(UTC) - timedelta(seconds=1)).granted
    assert heard(listening, 0.3) == []
    firing = datetime.now(UTC) + timedelta(seconds=0.2)
    time.sleep(0.3)  # the firing's time has come (the database's clock is this machine's)
    granted = ask(firing)
    assert granted.granted
    [notice] = heard(listening, 5)
    assert notice["generation"] == granted.generation and notice["server"] == "srv-b"
    assert notice["due_in"] == pytest.approx(59.9, abs=1)


def test_the_masters_listener_hears_grants_and_only_commands_wake_the_controls(
        pg_engine: Engine) -> None:
    """The master's own LISTEN connection (fleet/listener.py), once its watch began: a grant
    reaches the GrantWatch and does not ask the controls for a read; a command still does."""
    from pandaserver.daemons.fleet.grantwatch import GrantWatch
    from pandaserver.daemons.fleet.listener import CommandListener
    from pandaserver.db.stores.operator_commands import ControlStore

    listener = CommandListener(pg_engine, retry_after=1.0)
    watch = GrantWatch()
    listener.watch_grants(watch, 0.0)
    listener.opened(listener.open(), None, False, 1.0)
    try:
        assert watch.since == 1.0 and listener.take_wake()  # listening: read the commands once
        fd = listener.fileno()
        assert fd is not None
        granted = LeaseStore(pg_engine).try_acquire("heard", "srv-a", 7, period=30, ttl=60)
        deadline = time.monotonic() + 10
        while "heard" not in watch.heard:
            assert time.monotonic() < deadline, "the grant was not heard"
            select.select([fd], [], [], 1)
            listener.read(2.0)
        assert watch.heard["heard"].generation == granted.generation
        assert not listener.take_wake()
        ControlStore(pg_engine).issue("pause", "tick", None, None, "ops")
        while not listener.take_wake():
            assert time.monotonic() < deadline, "the command did not wake the controls"
            select.select([fd], [], [], 1)
            listener.read(3.0)
    finally:
        listener.close()
    assert watch.since is None

"""The fleet's side of an idle master, in-process on real databases: the house chores go
out as one call, nothing wakes the loop before the next heartbeat, and on PostgreSQL a
recorded command wakes the listening connection, which is opened again when it ends."""

from __future__ import annotations

import selectors
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.fleet.fleetdb import FleetDb
from pandaserver.daemons.fleet.lanes import Chore
from pandaserver.db.base import prepared
from pandaserver.db.stores.operator_commands import ControlStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answered(fleet: FleetDb, timeout: float = 10.0) -> None:
    """Wait for the lanes' answers as the loop's wait does, and act on them."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fleet.fileno(), selectors.EVENT_READ)
        while any(lane.busy for lane in fleet.lanes.values()):
            assert time.monotonic() < deadline, "no answer from the database"
            if sel.select(0.5):
                fleet.collect()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_heartbeat_sweep_and_command_read_are_one_call_then_sleep_until_the_next_beat(
        db_engine: Engine) -> None:
    clock = Clock()
    fleet = FleetDb(db_engine, "srv", DaemonSettings(path="x"), clock, datetime.now(UTC))
    fleet.pruner.next_at = float("inf")  # pruning is tested apart
    fleet.schema_ok = True  # as open_fleet leaves it
    got: list[Any] = []
    try:
        fleet.chores.append(Chore("operator commands", lambda: "read",
                                  lambda result, error, late: got.append((result, error))))
        wake = fleet.tick(clock.now)
        house = fleet.lanes["house"]
        assert house.current is not None and not house.pending, "more than one call"
        assert house.current.what == ("heartbeat + sweep of dead masters' runs + operator"
                                      " commands")
        assert wake == house.current.deadline  # only the call's own bound, while it runs
        answered(fleet)
        assert got == [("read", None)] and fleet.down_since is None
        beat = clock.now + fleet.settings.heartbeat_interval
        clock.now += 1.0
        assert fleet.tick(clock.now) == beat, "woke before the next heartbeat"
        assert not house.busy
    finally:
        fleet.close(timeout=5)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_an_idle_round_is_statements_compiled_once_on_the_driver(
        db_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round of every heartbeat interval (the beat with its look for dead masters' runs,
    the command read) runs nothing through SQLAlchemy's execution path: statements compiled
    once, on the driver (pandaserver/db/base/prepared.py); on PostgreSQL two statements."""
    clock = Clock()
    fleet = FleetDb(db_engine, "srv", DaemonSettings(path="x"), clock, datetime.now(UTC))
    fleet.pruner.next_at = float("inf")
    fleet.schema_ok = True
    store = ControlStore(db_engine)
    got: list[Any] = []

    def read() -> None:  # as FleetControl sends the controls' read
        fleet.chores.append(Chore("operator commands", lambda: store.poll("srv", 1, 0, [], None),
                                  lambda result, error, late: got.append((result, error))))

    try:
        read()
        fleet.tick(clock.now)  # the first round (and, on PostgreSQL, the listener's LISTEN)
        answered(fleet)
        clock.now += fleet.settings.heartbeat_interval
        through_sqlalchemy: list[str] = []
        on_driver: list[str] = []
        event.listen(db_engine, "before_cursor_execute",
                     lambda conn, cursor, sql, *rest: through_sqlalchemy.append(sql))
        rows = prepared.Session.rows

        def counted(session: prepared.Session, statement: prepared.Prepared,
                    *args: Any, **kwargs: Any) -> Any:
            on_driver.append(statement.compiled(session.dialect).sql)
            return rows(session, statement, *args, **kwargs)

        monkeypatch.setattr(prepared.Session, "rows", counted)
        read()
        fleet.tick(clock.now)
        assert fleet.lanes["house"].current is not None, "no round at the heartbeat"
        answered(fleet)
        assert [error for _, error in got] == [None, None] and fleet.down_since is None
        assert through_sqlalchemy == [], "SQLAlchemy's execution path in an idle round"
        assert len(on_driver) == (2 if db_engine.dialect.name == "postgresql" else 3), on_driver
    finally:
        fleet.close(timeout=5)


def test_a_recorded_command_wakes_the_listener_and_a_cut_one_listens_again(
        pg_engine: Engine) -> None:
    clock = Clock()
    fleet = FleetDb(pg_engine, "srv", DaemonSettings(path="x"), clock, datetime.now(UTC))
    fleet.pruner.next_at = float("inf")
    listener = fleet.listener
    assert listener is not None
    store = ControlStore(pg_engine)
    try:
        fleet.tick(clock.now)
        answered(fleet)
        fd = listener.fileno()
        assert fd is not None and listener.take_wake(), "listening did not ask for a read"
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            assert not sel.select(0.2), "readable with nothing recorded"
            store.issue("pause", "tick", None, None, "ops")
            assert sel.select(10), "a recorded command did not wake the listener"
        listener.read(clock.now)
        assert listener.take_wake() and listener.notified == 1

        pid = listener.conn.get_backend_pid()  # the server ends the listening connection
        store.engine.dispose()
        with pg_engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        deadline = time.monotonic() + 10
        with selectors.DefaultSelector() as sel:  # as the loop's wait: read when readable
            sel.register(fd, selectors.EVENT_READ)
            while listener.conn is not None:
                assert time.monotonic() < deadline, "the end of the connection was missed"
                if sel.select(1):
                    listener.read(clock.now)
        assert listener.lost == 1 and listener.wanted(clock.now)
        fleet.tick(clock.now)  # opened again on the house lane
        answered(fleet)
        assert listener.conn is not None and listener.conn.get_backend_pid() != pid
        assert listener.take_wake(), "listening again did not ask for a read"
    finally:
        fleet.close(timeout=5)

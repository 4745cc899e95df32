"""Statements compiled once and run on the driver (pandaserver/db/base/prepared.py): what an
idle master reads every command interval is what SQLAlchemy's path reads, and a driver's
error is SQLAlchemy's, its connection not reused. SQLite and PostgreSQL (the others keep
SQLAlchemy's path)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, MetaData, Table, column, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from pandaserver.db.base import prepared
from pandaserver.db.base.prepared import Prepared
from pandaserver.db.stores import operator_commands as dbcontrol

ON_DRIVER = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


def sqlalchemy_poll(store: dbcontrol.ControlStore, after: int,
                    monkeypatch: pytest.MonkeyPatch) -> dbcontrol.PollResult:
    with monkeypatch.context() as patch:
        patch.setattr(Prepared, "supported", staticmethod(lambda engine: False))
        return store.poll("srv-a", 1, after, [], None)


@ON_DRIVER
def test_the_command_read_on_the_driver_equals_sqlalchemys(
        db_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    store = dbcontrol.ControlStore(db_engine)
    store.poll("srv-a", 1, None, [], None)  # a master's first read: only the newest id
    assert db_engine.dialect.name in store._read._compiled, \
        "the read of every interval is compiled at its next call (30-60 s in), not the first"
    issued = [
        store.issue(dbcontrol.PAUSE, "s1", None, "everywhere", "op"),
        store.issue(dbcontrol.PAUSE, "s2", "srv-a", None, "op"),
        store.issue(dbcontrol.PAUSE, "s3", "srv-b", None, "op"),  # another server's
        store.issue(dbcontrol.DRAIN, "srv-a", "srv-a", "upgrade", "op"),
        store.issue(dbcontrol.DRAIN, "srv-b", "srv-b", None, "op"),  # another server's
        store.issue(dbcontrol.KILL, "s1", "srv-b", None, "op"),  # meant for another
        store.issue(dbcontrol.RUN_NOW, "s4", None, None, "op"),
    ]
    for after in (0, issued[2].id, issued[-1].id):
        read = store.poll("srv-a", 1, after, [], None)
        assert read == sqlalchemy_poll(store, after, monkeypatch)
    read = store.poll("srv-a", 1, 0, [], None)
    assert sorted((h.kind, h.name, h.server) for h in read.holds) == [
        (dbcontrol.DRAIN, "srv-a", "srv-a"), (dbcontrol.PAUSE, "s1", dbcontrol.EVERY),
        (dbcontrol.PAUSE, "s2", "srv-a")]
    assert [c.id for c in read.commands] == [issued[i].id for i in (0, 1, 3, 6)]
    assert read.last_id == issued[6].id
    assert read.commands[0].requested_at == issued[0].requested_at  # a datetime, in UTC


@ON_DRIVER
def test_a_driver_error_is_sqlalchemys_and_its_connection_is_not_reused(
        db_engine: Engine) -> None:
    missing = Prepared(select(column("x")).select_from(Table("no_such_table", MetaData())))
    def connection() -> object:
        with prepared.run(db_engine) as session:
            assert session.rows(Prepared(select(1))) == [(1,)]
            return session.dbapi_connection

    first = connection()
    assert connection() is first, "the pool does not keep its connections"
    with pytest.raises((OperationalError, ProgrammingError)), prepared.run(db_engine) as session:
        assert session.dbapi_connection is first
        session.rows(missing)
    assert connection() is not first, "the failed connection went back to the pool"

"""PanDA's generic SQL calls on the TaskBuffer (querySQLS, querySQL, executemanySQL), on
SQLite, PostgreSQL and MariaDB.

The expected conventions are PanDA's (DBProxy.querySQLS and executemanySQL as run on
PostgreSQL): ``(None, rows)``, ``(None, rowcount)`` for INSERT/UPDATE/DELETE, ``(-1, None)``
on an error; each call its own committed transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import write_config
from pg import url_text
from sqlalchemy import URL, Column, DateTime, Engine, Integer, MetaData, String, Table, text

from pandaserver.config import load_config
from pandaserver.taskbuffer import RunContext, TaskBuffer

JOBS = MetaData()
# a table of a script's own, shaped like PanDA's (naive UTC times)
jobs = Table("t_jobs", JOBS, Column("pandaid", Integer, primary_key=True),
             Column("status", String(32), nullable=False),
             Column("modtime", DateTime(), nullable=True))


@pytest.fixture
def tbuf(db_engine: Engine) -> TaskBuffer:
    JOBS.create_all(db_engine)
    return TaskBuffer(db_engine, RunContext("add_main", run_id=12, generation=3))


def insert(tbuf: TaskBuffer, pandaid: int, status: str, age: timedelta = timedelta(0)
           ) -> object:
    when = datetime.now(UTC).replace(tzinfo=None) - age
    return tbuf.querySQLS("INSERT INTO ATLAS_PANDA.t_jobs (pandaid, status, modtime)"
                          " VALUES (:id, :status, :modtime)",
                          {":id": pandaid, ":status": status, ":modtime": when})


def test_select_with_binds_and_dml_rowcounts(tbuf: TaskBuffer) -> None:
    for pandaid, status in ((1, "running"), (2, "running"), (3, "finished")):
        assert insert(tbuf, pandaid, status) == (None, 1)
    status, rows = tbuf.querySQLS("SELECT pandaid, status FROM t_jobs WHERE status=:status"
                                  " ORDER BY pandaid", {":status": "running"})
    assert (status, rows) == (None, [(1, "running"), (2, "running")])
    assert all(type(row) is tuple for row in rows)  # type: ignore[union-attr]
    # keys without the colon are accepted too; no match is an empty list, not an error
    assert tbuf.querySQL("SELECT pandaid FROM t_jobs WHERE status=:s", {"s": "lost"}) == []
    assert tbuf.querySQLS("UPDATE t_jobs SET status=:new WHERE status=:old",
                          {":new": "holding", ":old": "running"}) == (None, 2)
    # lower case and leading blanks or comments: still a row count
    assert tbuf.querySQLS("\n  /* tidy */ delete from t_jobs where status = :s",
                          {":s": "holding"}) == (None, 2)
    assert tbuf.querySQL("SELECT COUNT(*) FROM t_jobs", {}) == [(1,)]


def test_executemany_in_one_transaction(tbuf: TaskBuffer) -> None:
    maps = [{":id": i, ":status": "defined"} for i in range(1, 6)]
    assert tbuf.executemanySQL("INSERT INTO t_jobs (pandaid, status) VALUES (:id, :status)",
                               maps) == 5
    assert tbuf.executemanySQL("UPDATE t_jobs SET status='sent' WHERE pandaid=:id",
                               [{":id": 1}, {":id": 2}, {":id": 99}]) == 2
    assert tbuf.executemanySQL("DELETE FROM t_jobs WHERE pandaid=:id", []) == 0
    # a failing map applies nothing of the batch
    assert tbuf.executemanySQL("INSERT INTO t_jobs (pandaid, status) VALUES (:id, 'x')",
                               [{":id": 10}, {":id": 3}]) is None
    # other statements are refused, as PanDA does
    assert tbuf.executemanySQL("SELECT pandaid FROM t_jobs WHERE pandaid=:id",
                               [{":id": 1}]) is None
    assert tbuf.querySQL("SELECT pandaid, status FROM t_jobs ORDER BY pandaid", {}) == [
        (1, "sent"), (2, "sent"), (3, "defined"), (4, "defined"), (5, "defined")]


def test_errors_are_minus_one_and_logged_with_the_run(tbuf: TaskBuffer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pandaserver.taskbuffer")
    assert tbuf.querySQLS("SELECT nosuchcolumn FROM t_jobs", {}) == (-1, None)
    assert tbuf.querySQL("SELECT * FROM t_nosuchtable", {}) is None
    assert tbuf.querySQLS("SELECT * FROM t_jobs WHERE pandaid=:id", {}) == (-1, None)
    assert tbuf.querySQLS("SELECT 1", ["not", "a", "map"]) == (-1, None)  # type: ignore[arg-type]
    assert tbuf.executemanySQL("INSERT INTO t_nosuchtable VALUES (:a)", [{":a": 1}]) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert all(line.startswith("script=add_main run=12 ") for line in lines)
    assert "querySQLS: database error:" in lines[0] and "nosuchcolumn" in lines[0]
    assert "varMap must be a dict" in lines[3]
    # an untranslated Oracle-ism fails with a hint naming it
    assert tbuf.querySQLS("SELECT NVL(status, 'x') FROM t_jobs WHERE ROWNUM <= 1", {}) \
        == (-1, None) or tbuf.engine.dialect.name == "mysql"  # MariaDB has NVL, not ROWNUM
    assert "Oracle SQL not translated for this database" in caplog.records[-1].getMessage()
    assert "ROWNUM" in caplog.records[-1].getMessage()


def test_a_call_is_committed_for_other_connections(tbuf: TaskBuffer, db_engine: Engine,
                                                   make_engine_for: Callable[[URL], Engine]
                                                   ) -> None:
    other = make_engine_for(db_engine.url)
    assert insert(tbuf, 7, "activated") == (None, 1)
    assert tbuf.executemanySQL("INSERT INTO t_jobs (pandaid, status) VALUES (:id, 'x')",
                               [{":id": 8}]) == 1
    with other.connect() as conn:
        assert conn.execute(text("SELECT pandaid FROM t_jobs ORDER BY pandaid")).all() == [
            (7,), (8,)]
    # and nothing is left checked out of the pool
    assert tbuf.close_leftovers() == 0


def test_oracle_schema_prefixes_and_dates(db_engine: Engine, tmp_path: Path) -> None:
    # the schema prefix becomes [server] schemaPANDA where set (dropped on SQLite): on
    # PostgreSQL a schema of its own, where the table is not found without the rename
    own_schema = {"postgresql": "doma_panda", "mysql": db_engine.url.database}.get(
        db_engine.dialect.name, "main")
    if db_engine.dialect.name == "postgresql":
        with db_engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA doma_panda"))
            conn.execute(text("CREATE TABLE doma_panda.t_jobs (pandaid INTEGER PRIMARY KEY,"
                              " status VARCHAR(32) NOT NULL, modtime TIMESTAMP)"))
    else:
        JOBS.create_all(db_engine)
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}},
                       extra=f"[server]\nschemaPANDA = {own_schema}\n")
    tbuf = TaskBuffer.from_config(load_config(str(cfg)), url=url_text(db_engine.url))
    assert insert(tbuf, 1, "a", timedelta(hours=2)) == (None, 1)
    assert insert(tbuf, 2, "b", timedelta(days=2)) == (None, 1)
    assert insert(tbuf, 3, "c", timedelta(days=-1)) == (None, 1)  # tomorrow

    def ids(where: str, var_map: dict[str, object] | None = None) -> list[int]:
        rows = tbuf.querySQL(f"SELECT pandaid FROM ATLAS_PANDA.t_jobs WHERE {where}"
                             " ORDER BY pandaid", var_map or {})
        assert isinstance(rows, list), where
        return [row[0] for row in rows]

    assert ids("modtime < SYSDATE") == [1, 2]
    assert ids("modtime > SYSDATE - 1 AND modtime < CURRENT_DATE") == [1]
    assert ids("modtime > sysdate - 1/24") == [3]
    assert ids("modtime > SYSDATE-:days", {":days": 3}) == [1, 2, 3]
    assert ids("modtime BETWEEN SYSDATE - (:hours/24) AND SYSDATE + 0.5", {":hours": 3}) == [1]
    # inside a literal nothing changes
    assert tbuf.querySQL("SELECT 'SYSDATE ATLAS_PANDA.x'", {}) == [("SYSDATE ATLAS_PANDA.x",)]
    tbuf.dispose()


def test_statement_timeout_bounds_a_call_and_is_put_back(tbuf: TaskBuffer,
                                                         db_engine: Engine) -> None:
    slow = {"postgresql": "SELECT pg_sleep(30)",
            "mysql": "SELECT COUNT(*) FROM information_schema.columns a,"
                     " information_schema.columns b, information_schema.columns c",
            "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                      " WHERE i < 1000000000) SELECT COUNT(*) FROM n"}[db_engine.dialect.name]
    tbuf.statement_timeout = 1
    assert tbuf.querySQLS(slow, {}) == (-1, None)
    # the session the script's own engine use gets is the server's default again
    with tbuf.engine.connect() as conn:
        if db_engine.dialect.name == "postgresql":
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
        if db_engine.dialect.name == "mysql":
            assert conn.execute(text("SELECT @@session.max_statement_time")).scalar() == 0
            assert conn.execute(text("SELECT @@session.innodb_lock_wait_timeout ="
                                     " @@global.innodb_lock_wait_timeout")).scalar() == 1
    with pytest.raises(ValueError, match="statement_timeout must be a positive number"):
        tbuf.statement_timeout = 0

"""``pause`` & co. on a SQLite file write through ``sqlite3`` (``SqliteControl``) the rows
SQLAlchemy's ``ControlStore`` writes, and read back what it reads."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine

from pandaserver.db.direct.operator_sqlite import SqliteControl
from pandaserver.db.direct.sqlitedirect import opened
from pandaserver.db.stores import operator_commands as dbcontrol
from pandaserver.db.stores.heartbeat import HeartbeatStore
from pandaserver.db.stores.operator_commands import ControlStore

# (verb, target, server, reason): every kind of change to the holds, and none
SEQUENCE = [
    (dbcontrol.PAUSE, "tick", None, "fleet-wide"),
    (dbcontrol.PAUSE, "tock", "alpha", None),
    (dbcontrol.PAUSE, "tock", "beta", "twice"),
    (dbcontrol.PAUSE, "tick", "beta", None),  # lifted by the resume everywhere below
    (dbcontrol.RESUME, "tock", "alpha", None),
    (dbcontrol.RESUME, "tick", None, None),
    (dbcontrol.DRAIN, "beta", "beta", "patching"),
    (dbcontrol.UNDRAIN, "alpha", "alpha", None),
    (dbcontrol.RUN_NOW, "tick", None, None),
    (dbcontrol.KILL, "tock", "beta", "stuck"),
    (dbcontrol.RESTART_WORKERS, "*", "alpha", None),
]
STORED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")  # UtcDateTime on SQLite


def _rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {table: [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")]
                for table in ("daemon_command", "daemon_hold")}
    finally:
        conn.close()


def _without_times(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    times = {"requested_at", "since"}
    return {t: [{k: v for k, v in r.items() if k not in times} for r in found]
            for t, found in rows.items()}


def test_both_paths_write_the_same_rows_and_read_them_alike(
        tmp_path: Path, fill_migrated: Callable[[URL], None],
        make_engine_for: Callable[[URL], Engine]) -> None:
    paths = {way: tmp_path / f"{way}.sqlite" for way in ("sqlalchemy", "sqlite3")}
    engines = {}
    for way, path in paths.items():
        url = URL.create("sqlite", database=str(path))
        fill_migrated(url)
        engines[way] = make_engine_for(url)
    store = ControlStore(engines["sqlalchemy"])
    with opened(paths["sqlite3"]) as conn:
        direct = SqliteControl(conn)
        for verb, target, server, reason in SEQUENCE:
            one = store.issue(verb, target, server, reason, "op@host")
            other = direct.issue(verb, target, server, reason, "op@host")
            assert type(one.requested_at) is type(other.requested_at)
            assert one.requested_at.tzinfo == other.requested_at.tzinfo
            assert {**vars(one), "requested_at": None} == {**vars(other), "requested_at": None}
    written = {way: _rows(path) for way, path in paths.items()}
    assert written["sqlite3"]["daemon_hold"], "the sequence leaves holds in force"
    assert _without_times(written["sqlite3"]) == _without_times(written["sqlalchemy"])
    for rows in written.values():
        at = {c["id"]: c["requested_at"] for c in rows["daemon_command"]}
        assert all(STORED.fullmatch(t) for t in at.values()), at
        assert all(h["since"] == at[h["command_id"]] for h in rows["daemon_hold"]), rows

    # the reads: the same rows through both executors, on one file
    engine = engines["sqlite3"]
    HeartbeatStore(engine).beat("alpha", 11, "1.0", store.recent(1)[0].requested_at, "h")
    ControlStore(engine).poll("alpha", 11, 0, [(1, "paused"), (2, "paused")], None)
    sqlalchemy_side = ControlStore(engine)
    with opened(paths["sqlite3"]) as conn:
        direct = SqliteControl(conn)
        assert direct.holds() == sqlalchemy_side.holds()
        assert direct.recent(4) == sqlalchemy_side.recent(4)
        assert direct.acks(1) == sqlalchemy_side.acks(1) != []
        ((name, age),) = direct.servers()
        ((name_too, age_too),) = sqlalchemy_side.servers()
        assert name == name_too == "alpha" and 0 <= age <= age_too  # read in this order


def test_the_statements_both_paths_share_on_every_backend(db_engine: Engine) -> None:
    """``operator_statements`` (named parameters) through SQLAlchemy on each backend: the
    holds the sequence leaves, the newest commands, the servers."""
    store = ControlStore(db_engine)
    issued = [store.issue(verb, target, server, reason, "op@host")
              for verb, target, server, reason in SEQUENCE]
    assert [c.id for c in issued] == sorted({c.id for c in issued})
    assert [(h.kind, h.name, h.server, h.command_id) for h in store.holds()] == [
        ("drain", "beta", "beta", issued[6].id), ("pause", "tock", "beta", issued[2].id)]
    assert [c.verb for c in store.recent(3)] == [dbcontrol.RESTART_WORKERS, dbcontrol.KILL,
                                                 dbcontrol.RUN_NOW]
    assert store.servers() == [] and store.pushed == (db_engine.dialect.name == "postgresql")

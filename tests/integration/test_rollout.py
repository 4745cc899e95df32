"""Rolling upgrades on real databases: `db upgrade` records which code works with the new
revision, says what it did, only adds in its expand steps, and never makes a running fleet
queue behind a table lock it waits for (docs/database.md, "Rolling upgrades")."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
from alembic import command
from harness import wait_for
from sqlalchemy import URL, Engine, inspect, select

from pandaserver.commands.database import cmd_db_upgrade
from pandaserver.config import PandaConfig
from pandaserver.db.base import schema
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import (
    CONTRACT,
    EXPAND,
    UpgradeBlocked,
    current_revision,
    ensure_schema,
    head_revision,
    known_revisions,
    oldest_code_for,
    steps,
    upgrade,
)
from pandaserver.db.base.tables import daemon_schema_compat
from pandaserver.exitcodes import RET_FAILED


def _upgrade_to(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), revision)


def _recorded(engine: Engine) -> list[tuple[str, str, str]]:
    table = daemon_schema_compat
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.revision, table.c.oldest_code, table.c.recorded_by)
                            .order_by(table.c.revision)).all()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_upgrade_records_which_code_works_with_the_revision_it_reached(
        empty_engine: Engine) -> None:
    head = head_revision()
    assert upgrade(empty_engine) == (None, head)
    ((revision, oldest, by),) = _recorded(empty_engine)
    assert (revision, oldest) == (head, oldest_code_for(head)) and by.startswith("panda-daemon ")
    assert upgrade(empty_engine) == (head, head)
    assert len(_recorded(empty_engine)) == 1
    # lost (on MySQL every DDL statement commits by itself: a crash before the record):
    # the next `db upgrade` writes it
    with empty_engine.begin() as conn:
        conn.execute(daemon_schema_compat.delete())
    assert upgrade(empty_engine) == (head, head)
    assert [row[:2] for row in _recorded(empty_engine)] == [(head, oldest_code_for(head))]


def _shape(engine: Engine) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    inspector = inspect(engine)
    for table in inspector.get_table_names():
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        unique = {tuple(i["column_names"]) for i in inspector.get_indexes(table) if i["unique"]}
        unique |= {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
        found[table] = {"columns": columns, "unique": unique}
    return found


def test_expand_migrations_only_add(empty_engine: Engine) -> None:
    """What older code sees is still there after each expand step: every table, column
    (same type, same nullability) and unique key; a column added to an existing table is
    nullable or has a server default (older code's inserts leave it out)."""
    previous: str | None = None
    before = _shape(empty_engine)
    for step in steps(head_revision(), None):
        _upgrade_to(empty_engine, step.revision)
        after = _shape(empty_engine)
        if step.compatibility == EXPAND and previous is not None:
            for table, shape in before.items():
                assert table in after, f"{step.revision} (expand) dropped table {table}"
                old_cols = shape["columns"]
                new_cols = after[table]["columns"]
                assert isinstance(old_cols, dict) and isinstance(new_cols, dict)
                for name, column in old_cols.items():
                    assert name in new_cols, f"{step.revision} (expand) dropped {table}.{name}"
                    assert str(new_cols[name]["type"]) == str(column["type"]), (step, name)
                    assert new_cols[name]["nullable"] == column["nullable"], (step, name)
                for name in set(new_cols) - set(old_cols):
                    added = new_cols[name]
                    assert added["nullable"] or added.get("default") is not None, (
                        f"{step.revision} (expand) added {table}.{name} NOT NULL without a"
                        " server default: older code's inserts would fail")
                assert shape["unique"] <= after[table]["unique"], (  # type: ignore[operator]
                    f"{step.revision} (expand) dropped a unique key of {table}")
        before, previous = after, step.revision


def test_db_upgrade_says_each_step_and_which_code_works(
        empty_engine: Engine, config_for: Callable[..., PandaConfig],
        capsys: pytest.CaptureFixture[str]) -> None:
    chain = known_revisions()[::-1]
    _upgrade_to(empty_engine, chain[-2])
    assert cmd_db_upgrade(config_for(empty_engine.url), argparse.Namespace()) == 0
    out = capsys.readouterr().out.splitlines()
    head, step = head_revision(), steps(head_revision(), chain[-2])[0]
    assert out[0].endswith(f": schema upgraded from {chain[-2]} to {head}")
    assert out[1] == f"  {head} {step.compatibility:<8} {step.summary}"
    assert out[2].startswith(f"works with panda-daemon code of schema {oldest_code_for(head)}"
                             f" to {head}: servers still on a release of schema")
    assert len(out) == 3


# --- locks: PostgreSQL --------------------------------------------------------------------

def _hold_a_table(pg_url: URL, table: str) -> psycopg2.extensions.connection:
    """A session inside a transaction that has read ``table`` (so holds its ACCESS SHARE
    lock until it ends), as a long report or a stuck client would."""
    conn = psycopg2.connect(host=pg_url.host, port=pg_url.port, user=pg_url.username,
                            password=pg_url.password, dbname=pg_url.database)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
    return conn


def _write(pg_url: URL) -> None:
    """A master's kind of statement on daemon_server, bounded (5 s) so a test fails, not
    hangs, when it queues behind the migration."""
    conn = psycopg2.connect(host=pg_url.host, port=pg_url.port, user=pg_url.username,
                            password=pg_url.password, dbname=pg_url.database,
                            options="-c statement_timeout=5000")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("UPDATE daemon_server SET last_seen = now() WHERE server = 'x'")
    finally:
        conn.close()


@pytest.fixture
def at_first_revision(pg_url: URL) -> Iterator[Engine]:
    # bounded statements: a migration that queued for its lock for good fails the test
    # (statement timeout) instead of hanging it
    engine = engine_from_url(pg_url, statement_timeout=8.0)
    _upgrade_to(engine, known_revisions()[-1])  # the next step alters daemon_server
    yield engine
    engine.dispose()


def test_a_migration_waiting_for_a_lock_steps_aside_for_the_fleet(
        pg_url: URL, at_first_revision: Engine, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(schema, "LOCK_TIMEOUT", 0.3)
    monkeypatch.setattr(schema, "LOCK_PAUSE", 0.1)
    caplog.set_level(logging.WARNING, logger=schema.log.name)
    holder = _hold_a_table(pg_url, "daemon_server")
    outcome: list[object] = []
    upgrader = threading.Thread(target=lambda: outcome.append(upgrade(at_first_revision)))
    try:
        upgrader.start()

        def written_through_three_rollbacks() -> bool:
            _write(pg_url)  # passes while the migration waits or pauses, never queued long
            return caplog.text.count("was rolled back") >= 3

        wait_for(written_through_three_rollbacks, 30, "three attempts of the migration")
        assert current_revision(at_first_revision) == known_revisions()[-1]
    finally:
        holder.rollback()  # the long transaction ends: the next attempt gets through
        holder.close()
        upgrader.join(timeout=60)
    assert outcome == [(known_revisions()[-1], head_revision())]


def test_a_migration_that_never_gets_its_lock_gives_up_unchanged(
        pg_url: URL, at_first_revision: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "LOCK_TIMEOUT", 0.2)
    monkeypatch.setattr(schema, "LOCK_PAUSE", 0.05)
    monkeypatch.setattr(schema, "LOCK_ATTEMPTS", 2)
    holder = _hold_a_table(pg_url, "daemon_server")
    try:
        with pytest.raises(UpgradeBlocked, match=r"waited 0\.2 s for a table lock 2 times"):
            upgrade(at_first_revision)
    finally:
        holder.rollback()
        holder.close()
    assert current_revision(at_first_revision) == known_revisions()[-1]  # nothing changed


def test_a_contract_step_needs_db_upgrade_contract(
        tmp_path: Path, config_for: Callable[..., PandaConfig],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # on SQLite: the guard is the same on every backend, decided before any DDL
    chain = known_revisions()[::-1]
    engine = engine_from_url(URL.create("sqlite", database=str(tmp_path / "x.sqlite")))
    try:
        _upgrade_to(engine, chain[-2])
        head = head_revision()
        monkeypatch.setattr(schema, "compatibility",
                            lambda rev: CONTRACT if rev == head else EXPAND)
        config = config_for(engine.url)
        assert cmd_db_upgrade(config, argparse.Namespace(contract=False)) == RET_FAILED
        err = capsys.readouterr().err
        assert (f"the upgrade from {chain[-2]} to {head} holds contract step(s) {head}:"
                f" afterwards only code of schema {head} or later works with the database"
                f" (now: {chain[0]} or later)") in err
        assert err.rstrip().endswith("run `panda-daemon db upgrade --contract`")
        assert current_revision(engine) == chain[-2]  # nothing changed
        assert cmd_db_upgrade(config, argparse.Namespace(contract=True)) == 0
        out = capsys.readouterr().out
        assert f"  {head} contract " in out
        assert f"works with panda-daemon code of schema {head} to {head}" in out
        assert _recorded(engine)[0][:2] == (head, head)
        # a master's own SQLite file (no other server reads it) is upgraded at start anyway
        private = engine_from_url(URL.create("sqlite", database=str(tmp_path / "own.sqlite")))
        _upgrade_to(private, chain[-2])
        assert ensure_schema(private) == head
        private.dispose()
    finally:
        engine.dispose()

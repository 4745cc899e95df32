"""Schema version checks and upgrades (Alembic, run in-process, no alembic.ini).

The version is kept in the table ``daemon_schema``. ``check_schema`` refuses a
database whose revision this code does not know (a newer panda-daemon migrated it)
and one that is behind (run ``panda-daemon db upgrade``). ``upgrade`` is safe to run
from several processes at once: it holds a PostgreSQL advisory lock, or on SQLite a
``BEGIN IMMEDIATE`` write lock, for the whole migration, which runs in one
transaction on both. On MySQL/MariaDB, where every DDL statement commits by itself,
it holds the named lock ``GET_LOCK('panda_daemon_schema')`` from before the version is
read until after the new one is committed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from pandaserver.db import revisions
from pandaserver.db.tables import VERSION_TABLE

if TYPE_CHECKING:  # Alembic is imported only to migrate: a check reads the files (revisions)
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key: "panda-sc" as a 64-bit integer
_PG_LOCK_KEY = int.from_bytes(b"panda-sc", "big") & 0x7FFF_FFFF_FFFF_FFFF
# MySQL/MariaDB: GET_LOCK name and how long an upgrader waits for another (seconds)
_MYSQL_LOCK_NAME = "panda_daemon_schema"
_MYSQL_LOCK_WAIT = 300
UPGRADE_HINT = "run `panda-daemon db upgrade`"
# a real transaction for the migration, even on an autocommit engine
_TRANSACTIONAL = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE",
                  "mysql": "REPEATABLE READ"}


class SchemaError(Exception):
    """The database schema does not match this panda-daemon (the message says what to do).

    ``kind`` is ``"missing"`` (no panda-daemon tables), ``"older"`` or ``"newer"``.
    """

    def __init__(self, message: str, kind: str, current: str | None, head: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.current = current
        self.head = head


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    return revisions.head()


def known_revisions() -> list[str]:
    """Every revision this code knows, the newest first."""
    return revisions.walk()


def _current(conn: Connection) -> str | None:
    # Read directly rather than through a MigrationContext, which logs at INFO each time.
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        return "+".join(sorted(rows))  # several heads: no revision this code knows
    return rows[0] if rows else None


def current_revision(engine: Engine) -> str | None:
    """The database's revision, None when panda-daemon's tables were never created."""
    with engine.connect() as conn:
        return _current(conn)


def _verdict(current: str | None) -> SchemaError | None:
    head = head_revision()
    if current == head:
        return None
    if current is None:
        return SchemaError(
            f"the database has no panda-daemon tables yet (schema {head} needed); {UPGRADE_HINT}",
            "missing", current, head,
        )
    if current not in known_revisions():
        return SchemaError(
            f"database schema {current} is newer than this panda-daemon knows (head {head});"
            " upgrade panda-daemon",
            "newer", current, head,
        )
    return SchemaError(
        f"database schema {current} is older than this panda-daemon needs (head {head});"
        f" {UPGRADE_HINT}",
        "older", current, head,
    )


def check_schema(engine: Engine) -> str:
    """Return the revision when it is exactly this code's head; else raise SchemaError."""
    current = current_revision(engine)
    problem = _verdict(current)
    if problem is not None:
        raise problem
    return head_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate the database to this code's head; returns (revision before, after).

    Refuses (SchemaError) a database that is newer than this code.
    """
    level = _TRANSACTIONAL.get(engine.dialect.name)
    transactional = engine.execution_options(isolation_level=level) if level else engine
    with transactional.connect() as conn:
        named_lock = _mysql_lock(conn)
        try:
            with conn.begin():
                _lock_for_migration(conn)
                before = _current(conn)  # read under the lock: another process may have upgraded
                problem = _verdict(before)
                if problem is not None and problem.kind == "newer":
                    raise problem
                if problem is not None:
                    log.info("upgrading panda-daemon schema from %s to %s", before or "nothing",
                             problem.head)
                    from alembic import command

                    command.upgrade(_config(conn), "head")
                after = _current(conn)
        finally:
            if named_lock:
                _mysql_unlock(conn)
    if after is None:  # pragma: no cover - alembic always stamps
        raise RuntimeError("the migration did not record a schema revision")
    return before, after


def _mysql_lock(conn: Connection) -> bool:
    """On MySQL/MariaDB, wait for the named lock of migrations (held by the session, across
    the commits that every DDL statement makes there); True when taken. Elsewhere False."""
    if conn.dialect.name != "mysql":
        return False
    with conn.begin():
        got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                           {"name": _MYSQL_LOCK_NAME, "wait": _MYSQL_LOCK_WAIT}).scalar()
    if got != 1:
        raise RuntimeError(f"another `panda-daemon db upgrade` held the schema lock for"
                           f" {_MYSQL_LOCK_WAIT} s; try again")
    return True


def _mysql_unlock(conn: Connection) -> None:
    if conn.invalidated:
        return  # the server released it with the session
    if conn.in_transaction():
        conn.rollback()
    with conn.begin():
        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})


def _lock_for_migration(conn: Connection) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif dialect == "sqlite":
        # pysqlite has not begun yet (it begins lazily before DML); take the write lock now,
        # so DDL runs in this transaction and a concurrent upgrader waits (busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_schema(engine: Engine, auto_upgrade: bool | None = None) -> str:
    """Make sure the schema is this code's head, upgrading when allowed.

    ``auto_upgrade`` None means: upgrade automatically on SQLite (a file private to
    this host), never on a shared server database, where ``panda-daemon db upgrade``
    is an operator's decision. A newer schema is always refused.
    """
    if auto_upgrade is None:
        auto_upgrade = engine.dialect.name == "sqlite"
    try:
        return check_schema(engine)
    except SchemaError as problem:
        if problem.kind == "newer" or not auto_upgrade:
            raise
    upgrade(engine)
    return check_schema(engine)

"""Schema version checks and upgrades (Alembic, run in-process, no alembic.ini).

The version is kept in the table ``daemon_schema``. ``check_schema`` accepts this code's
head, and a newer revision when the database records (table ``daemon_schema_compat``,
written by ``panda-daemon db upgrade``) that code of this head works with it: every
migration since was additive (rolling upgrades, docs/database.md). It refuses a newer
revision without that record or one that needs newer code, and one that is behind (run
``panda-daemon db upgrade``). ``upgrade`` is safe to run
from several processes at once: it holds a PostgreSQL advisory lock, or on SQLite a
``BEGIN IMMEDIATE`` write lock, for the whole migration, which runs in one
transaction on both. On MySQL/MariaDB, where every DDL statement commits by itself,
it holds the named lock ``GET_LOCK('panda_daemon_schema')`` from before the version is
read until after the new one is committed.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

from pandaserver import __version__
from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import daemon_schema_compat
from pandaserver.db.direct import revisions
from pandaserver.db.direct.schemacheck import (
    COMPAT_TABLE,
    CURRENT_SQL,
    OLDEST_CODE_SQL,
    VERSION_TABLE,
)
from pandaserver.db.direct.schemacheck import UPGRADE_HINT as UPGRADE_HINT
from pandaserver.db.direct.schemacheck import SchemaError as SchemaError
from pandaserver.db.direct.schemacheck import newer_but_compatible as newer_but_compatible
from pandaserver.db.direct.schemacheck import verdict as _verdict

if TYPE_CHECKING:  # Alembic is imported only to migrate: a check reads the files (revisions)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# pg_advisory_xact_lock key: "panda-sc" as a 64-bit integer
_PG_LOCK_KEY = int.from_bytes(b"panda-sc", "big") & 0x7FFF_FFFF_FFFF_FFFF
# MySQL/MariaDB: GET_LOCK name and how long an upgrader waits for another (seconds)
_MYSQL_LOCK_NAME = "panda_daemon_schema"
_MYSQL_LOCK_WAIT = 300
# PostgreSQL: how long one statement of a migration waits for a table lock before the whole
# migration rolls back and is tried again. A statement waiting for a lock blocks every later
# statement on that table (masters' grants and renewals) while it waits: a running fleet
# then waits at most this long, never behind a long transaction (docs/database.md).
LOCK_TIMEOUT = 1.0
LOCK_ATTEMPTS = 30
LOCK_PAUSE = 1.0  # between attempts: the fleet's statements run meanwhile
# What each migration declares (module attribute ``compatibility``): "expand", code of the
# revisions before it keeps working (additive only); "contract", it removes or changes
# something older code used; it may name (``oldest_code``) the revision of the release
# whose code no longer uses it, shipped before it (the two releases of a contract).
EXPAND, CONTRACT = "expand", "contract"
# a real transaction for the migration, even on an autocommit engine
_TRANSACTIONAL = {"postgresql": "READ COMMITTED", "sqlite": "SERIALIZABLE",
                  "mysql": "REPEATABLE READ"}


class UpgradeBlocked(Exception):
    """The migration could not take its locks in LOCK_ATTEMPTS tries (nothing changed)."""


class ContractStep(Exception):
    """The upgrade holds a contract step and was not allowed one (nothing changed)."""


@dataclass(frozen=True)
class Step:
    """One migration: its revision, ``expand`` or ``contract``, what it does (the first line
    of its docstring)."""

    revision: str
    compatibility: str
    summary: str


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    """The migrations as Alembic loads them (imports Alembic and every migration module):
    for what only a module tells (its ``compatibility``, its docstring), never for a check."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


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
    rows = conn.execute(text(CURRENT_SQL)).scalars().all()
    if len(rows) > 1:
        return "+".join(sorted(rows))  # several heads: no revision this code knows
    return rows[0] if rows else None


def _oldest_code(conn: Connection, current: str) -> str | None:
    """The oldest code revision recorded as working with schema ``current``; None when
    nothing is recorded (a database migrated before rolling upgrades, or by hand)."""
    if not inspect(conn).has_table(COMPAT_TABLE):
        return None
    found = conn.execute(text(OLDEST_CODE_SQL), {"rev": current}).scalar()
    return None if found is None else str(found)


def _read(conn: Connection) -> tuple[str | None, str | None]:
    """(the database's revision, the oldest code recorded for it when it is newer than this
    code's head; else None)."""
    current = _current(conn)
    if current is None or current in known_revisions():
        return current, None
    return current, _oldest_code(conn, current)


def current_revision(engine: Engine) -> str | None:
    """The database's revision, None when panda-daemon's tables were never created."""
    with engine.connect() as conn:
        return _current(conn)


def check_schema(engine: Engine) -> str:
    """Return the database's revision when this code works with it: its head, or a newer
    revision recorded as compatible with it; else raise SchemaError."""
    with engine.connect() as conn:
        current, oldest_code = _read(conn)
    problem = _verdict(current, oldest_code)
    if problem is not None:
        raise problem
    assert current is not None
    return current


def compatibility(revision: str) -> str:
    """``expand`` or ``contract``, as the migration declares (undeclared counts as contract:
    the safe side; tests/unit/test_migration_rollout.py asks every migration to say)."""
    module = _scripts().get_revision(revision).module
    declared = getattr(module, "compatibility", None)
    return declared if declared in (EXPAND, CONTRACT) else CONTRACT


def steps(after: str, before: str | None) -> list[Step]:
    """The migrations from ``before`` (excluded; None: from nothing) up to ``after``, oldest
    first."""
    found = []
    for script in _scripts().iterate_revisions(after, before or "base"):
        doc = (script.module.__doc__ or "").strip().splitlines()
        found.append(Step(script.revision, compatibility(script.revision),
                          doc[0] if doc else ""))
    return found[::-1]


def oldest_code_for(revision: str) -> str:
    """The oldest code revision that works with schema ``revision``: what its newest contract
    migration declares (``oldest_code``: the release before it stopped using what it
    removes; undeclared, the contract migration itself), else the first revision (every step
    since the first is additive)."""
    chain = steps(revision, None)
    contracts = [step.revision for step in chain if step.compatibility == CONTRACT]
    if not contracts:
        return chain[0].revision
    module = _scripts().get_revision(contracts[-1]).module
    return str(getattr(module, "oldest_code", None) or contracts[-1])


def recorded_oldest_code(engine: Engine, revision: str) -> str | None:
    """What the database records as the oldest code of ``revision`` (None: nothing)."""
    with engine.connect() as conn:
        return _oldest_code(conn, revision)


def _record(conn: Connection, revision: str) -> None:
    """Record which code works with ``revision`` (once: the first ``db upgrade`` to reach
    it), in the transaction of the migration; older code reads it (``_oldest_code``)."""
    if not inspect(conn).has_table(COMPAT_TABLE) or _oldest_code(conn, revision) is not None:
        return  # a revision before the table (an older head), or recorded already
    conn.execute(daemon_schema_compat.insert().values(
        revision=revision, oldest_code=oldest_code_for(revision), recorded_at=db_now_expr(),
        recorded_by=f"panda-daemon {__version__} on {socket.gethostname()}"[:255]))


def upgrade(engine: Engine, *, allow_contract: bool = False) -> tuple[str | None, str]:
    """Migrate the database to this code's head; returns (revision before, after).

    A migration that raises the oldest code that works with the database (a contract step)
    is applied only with ``allow_contract`` (else ContractStep, nothing changed): servers
    of older code refuse the result.

    Refuses (SchemaError) a database that is newer than this code and not recorded as
    working with it; leaves one that is (a newer release migrated it) as it is. Records
    which code works with the new revision (``daemon_schema_compat``). On PostgreSQL a
    statement that waits LOCK_TIMEOUT for a table lock rolls the migration back, and it is
    tried again after LOCK_PAUSE, LOCK_ATTEMPTS times at most (then UpgradeBlocked).
    """
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return _upgrade_once(engine, allow_contract)
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
                raise
            if attempt == LOCK_ATTEMPTS:
                raise UpgradeBlocked(
                    f"the migration waited {LOCK_TIMEOUT:g} s for a table lock {attempt} times"
                    " and was rolled back each time: a long transaction holds a lock on"
                    " panda-daemon's tables (see pg_stat_activity); nothing was changed; run"
                    " `panda-daemon db upgrade` again when it has ended") from None
            log.warning("the migration waited %g s for a table lock held by another session"
                        " and was rolled back (so the fleet's statements do not queue behind"
                        " it); trying again in %g s (attempt %d of %d)", LOCK_TIMEOUT,
                        LOCK_PAUSE, attempt + 1, LOCK_ATTEMPTS)
            time.sleep(LOCK_PAUSE)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_contract(before: str, allow_contract: bool) -> None:
    was, will = oldest_code_for(before), oldest_code_for(head_revision())
    if will == was or allow_contract:
        return
    contracts = [step.revision for step in steps(head_revision(), before)
                 if step.compatibility == CONTRACT]
    raise ContractStep(
        f"the upgrade from {before} to {head_revision()} holds contract step(s)"
        f" {', '.join(contracts)}: afterwards only code of schema {will} or later works with"
        f" the database (now: {was} or later); servers of older releases refuse it at their"
        " next start and may fail while they run; nothing was changed. When every server runs"
        f" a release of schema {will} or later, run `panda-daemon db upgrade --contract`")


def _upgrade_once(engine: Engine, allow_contract: bool) -> tuple[str | None, str]:
    level = _TRANSACTIONAL.get(engine.dialect.name)
    transactional = engine.execution_options(isolation_level=level) if level else engine
    with transactional.connect() as conn:
        named_lock = _mysql_lock(conn)
        try:
            with conn.begin():
                _lock_for_migration(conn)
                # read under the lock: another process may have upgraded
                before, oldest_code = _read(conn)
                problem = _verdict(before, oldest_code)
                if problem is not None and problem.kind == "newer":
                    raise problem
                if problem is not None:
                    if before is not None:
                        _check_contract(before, allow_contract)
                    log.info("upgrading panda-daemon schema from %s to %s", before or "nothing",
                             problem.head)
                    from alembic import command

                    command.upgrade(_config(conn), "head")
                after = _current(conn)
                if after == head_revision():
                    _record(conn, after)
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
        # taken: from here on, no statement waits long for a lock the fleet holds
        conn.execute(text(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'"))
    elif dialect == "sqlite":
        # pysqlite has not begun yet (it begins lazily before DML); take the write lock now,
        # so DDL runs in this transaction and a concurrent upgrader waits (busy_timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def ensure_schema(engine: Engine, auto_upgrade: bool | None = None) -> str:
    """Make sure the schema is this code's head, upgrading when allowed.

    ``auto_upgrade`` None means: upgrade automatically on SQLite (a file private to
    this host), never on a shared server database, where ``panda-daemon db upgrade``
    is an operator's decision. A newer schema is used when recorded as working with this
    code (logged), refused otherwise.
    """
    if auto_upgrade is None:
        auto_upgrade = engine.dialect.name == "sqlite"
    try:
        current = check_schema(engine)
        if current != head_revision():
            log.info("database schema %s is newer than this panda-daemon (head %s) and"
                     " records that it works with it: running on it (a rolling upgrade;"
                     " upgrade panda-daemon on this server in its turn)", current,
                     head_revision())
        return current
    except SchemaError as problem:
        if problem.kind == "newer" or not auto_upgrade:
            raise
    upgrade(engine, allow_contract=True)  # SQLite: no other server reads the file
    return check_schema(engine)

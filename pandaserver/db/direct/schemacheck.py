"""The schema check's verdict, its statements, and the check of the default SQLite file
without SQLAlchemy.

``verdict`` says whether this code works with a database's schema revision (the rules are
in ``pandaserver.db.base.schema``, which runs the same statements through SQLAlchemy:
``CURRENT_SQL``, ``OLDEST_CODE_SQL``, one definition for both). ``read_sqlite`` runs them
with the standard library's ``sqlite3`` on the file a configuration that names no database
uses (``default_sqlite``), so that a master (``pandaserver.commands.launch``) and the
preflight reach their first decision without importing SQLAlchemy (a tenth of a second or
more of a master's start).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from pandaserver.config import PandaConfig
from pandaserver.db.direct import revisions, statedir

VERSION_TABLE = "daemon_schema"
# Which code a schema revision works with: one row per revision that `db upgrade` reached,
# (revision, oldest_code): code whose newest known revision is oldest_code or later runs on
# it (rolling upgrades, pandaserver/db/base/schema.py). Read by name, with plain SQL, so that a
# release can read it before it knows the migration that creates it.
COMPAT_TABLE = "daemon_schema_compat"
HOLD_TABLE = "daemon_hold"  # what stays in force: pauses and drains (operator_commands.py)
# the statements of the check, run by SQLAlchemy (schema.py) and by sqlite3 (below) alike:
# both accept ``:name`` parameters
CURRENT_SQL = f"SELECT version_num FROM {VERSION_TABLE}"
OLDEST_CODE_SQL = f"SELECT oldest_code FROM {COMPAT_TABLE} WHERE revision = :rev"
ANY_HOLD_SQL = f"SELECT 1 FROM {HOLD_TABLE} LIMIT 1"
UPGRADE_HINT = "run `panda-daemon db upgrade`"
SQLITE_READ_TIMEOUT = 2.0  # seconds the read waits for a writer of the file


class SchemaError(Exception):
    """The database schema does not match this panda-daemon (the message says what to do).

    ``kind`` is ``"missing"`` (no panda-daemon tables), ``"older"`` or ``"newer"`` (newer,
    and not recorded as working with this code).
    """

    def __init__(self, message: str, kind: str, current: str | None, head: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.current = current
        self.head = head


def newer_but_compatible(current: str | None, oldest_code: str | None) -> bool:
    """A revision this code does not know, recorded as working with code this old or older:
    some server of the fleet ran ``db upgrade`` with a newer release (a rolling upgrade)."""
    known = revisions.walk()
    return (current is not None and current not in known and oldest_code is not None
            and oldest_code in known)


def verdict(current: str | None, oldest_code: str | None = None) -> SchemaError | None:
    """None when this code works with schema ``current`` (``oldest_code``: what the database
    records for it, read only when it is newer than this code); else why not."""
    head = revisions.head()
    if current == head or newer_but_compatible(current, oldest_code):
        return None
    if current is None:
        return SchemaError(
            f"the database has no panda-daemon tables yet (schema {head} needed); {UPGRADE_HINT}",
            "missing", current, head,
        )
    if current not in revisions.walk():
        if oldest_code is None:
            why = (" and does not record which older code works with it (it was migrated"
                   " by a release before rolling upgrades, or by hand)")
        else:
            why = f" and works only with code of schema {oldest_code} or later"
        return SchemaError(
            f"database schema {current} is newer than this panda-daemon knows (head {head}){why};"
            f" upgrade panda-daemon on this server to a release that knows schema"
            f" {oldest_code or current}",
            "newer", current, head,
        )
    return SchemaError(
        f"database schema {current} is older than this panda-daemon needs (head {head});"
        f" {UPGRADE_HINT}",
        "older", current, head,
    )


def default_sqlite(cfg: PandaConfig) -> Path | None:
    """The SQLite file of a configuration that names no database (no ``[daemon] db_url``,
    no ``[server] backend`` or ``dbhost``: the state directory's default); None when it
    names one (or a ``$VAR`` of it is unset: the full path says so)."""
    if cfg.daemon.db_url.strip():
        return None
    try:
        if (cfg.server_value("backend") or "").strip() or (cfg.server_value("dbhost") or "").strip():
            return None
    except KeyError:
        return None
    return statedir.default_state_dir() / statedir.SQLITE_FILENAME


def sqlite_url(path: Path) -> str:
    """The URL of SQLite file ``path`` as SQLAlchemy renders it (a test keeps them equal)."""
    return f"sqlite:///{path}"


@dataclass(frozen=True)
class SqliteState:
    current: str | None  # the schema revision (None: no panda-daemon tables)
    oldest_code: str | None  # recorded for a revision newer than this code, else None
    holds: bool  # a pause or drain is in force


def read_sqlite(path: Path) -> SqliteState:
    """The schema revision of SQLite file ``path`` (which exists), read only, and whether a
    hold is in force. Raises ``sqlite3.Error`` when it cannot be read."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           timeout=SQLITE_READ_TIMEOUT)
    try:
        return read_state(conn)
    finally:
        conn.close()


def read_state(conn: sqlite3.Connection) -> SqliteState:
    """``read_sqlite`` on an open ``sqlite3`` connection."""
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if VERSION_TABLE not in tables:
        return SqliteState(None, None, False)
    rows = sorted(str(row[0]) for row in conn.execute(CURRENT_SQL))
    current = "+".join(rows) if rows else None  # several heads: none this code knows
    oldest = None
    if current is not None and current not in revisions.walk() and COMPAT_TABLE in tables:
        found = conn.execute(OLDEST_CODE_SQL, {"rev": current}).fetchone()
        oldest = None if found is None or found[0] is None else str(found[0])
    holds = HOLD_TABLE in tables and conn.execute(ANY_HOLD_SQL).fetchone() is not None
    return SqliteState(current, oldest, holds)

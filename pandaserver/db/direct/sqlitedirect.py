"""A SQLite database reached through the standard library's ``sqlite3``, not SQLAlchemy.

A command that runs a few statements and exits (``pause``, ``resume``, ``fleet``...)
would spend most of its time importing SQLAlchemy. On a SQLite file it does without:
``sqlite_file`` finds the file a configuration names (the state directory's default, or a
plain ``sqlite:///FILE`` URL), ``opened`` connects as the engine does (``engine.py``: the
same busy timeout, WAL, foreign keys), checks the schema with ``schemacheck``'s statements
and verdict, and turns every failure into the message and exit code the SQLAlchemy path
gives (``CommandRefused``). The statements themselves stay defined once, as SQLAlchemy
Core in their store, compiled for SQLite into a checked-in text that a unit test compares.

Anything else (another backend, a URL with options, a file that does not exist yet: the
SQLAlchemy path creates it and says what is missing) is left to SQLAlchemy: ``sqlite_file``
returns None.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pandaserver.config import PandaConfig
from pandaserver.db.direct.schemacheck import default_sqlite, read_state, sqlite_url, verdict
from pandaserver.exitcodes import RET_DATABASE, RET_SCHEMA

SQLITE_BUSY_TIMEOUT = 5.0  # seconds SQLite waits for another writer (engine.py's too)
URL_PREFIX = "sqlite:///"


class CommandRefused(Exception):
    """What a command says on stderr before it exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def sqlite_file(cfg: PandaConfig) -> Path | None:
    """The existing SQLite file the configuration's database is; None when it names
    another backend, a URL this module does not read (options, quoting, memory) or a file
    that does not exist."""
    path = default_sqlite(cfg)
    if path is None:
        raw = cfg.daemon.db_url.strip()
        if not raw.startswith(URL_PREFIX) or any(c in raw for c in "?#%"):
            return None
        database = raw[len(URL_PREFIX):]
        if database in ("", ":memory:"):
            return None
        path = Path(database)
    return path if path.is_file() else None


def describe_error(exc: sqlite3.Error, url: str) -> str:
    """``engine.describe_db_error``'s words for a ``sqlite3`` error (a unit test compares)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"database {url}: {type(exc).__name__}: {' / '.join(lines) or 'no details'}"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` set up as the engine's are; transactions are explicit
    (``BEGIN`` ... ``COMMIT``)."""
    conn = sqlite3.connect(str(path), timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to SQLite file ``path`` whose schema this code works with, closed
    after. A refused schema and a database error become ``CommandRefused`` (RET_SCHEMA,
    RET_DATABASE) with the SQLAlchemy path's words."""
    url = sqlite_url(path)
    try:
        conn = connect(path)
    except sqlite3.Error as exc:
        raise CommandRefused(describe_error(exc, url), RET_DATABASE) from None
    try:
        state = read_state(conn)
        problem = verdict(state.current, state.oldest_code)
        if problem is not None:
            raise CommandRefused(f"database {url}: {problem}", RET_SCHEMA)
        yield conn
    except sqlite3.Error as exc:
        raise CommandRefused(describe_error(exc, url), RET_DATABASE) from None
    finally:
        conn.close()


def utc(text: str | None) -> datetime | None:
    """A timestamp as SQLite holds it (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), as the
    ``UtcDateTime`` type reads it back."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def typed_rows(cursor: sqlite3.Cursor, times: Collection[str]) -> list[dict[str, Any]]:
    """A cursor's rows as dicts by column, the ``times`` columns read as ``utc`` does (as
    SQLAlchemy's rows of the same statement read them back)."""
    columns = [d[0] for d in cursor.description]
    return [{c: utc(v) if c in times else v for c, v in zip(columns, row, strict=True)}
            for row in cursor.fetchall()]

"""One atomic insert-or-update-where statement, for the dialects that have one.

PostgreSQL (9.5+) and SQLite (3.35+, for RETURNING) both spell it
``INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE ... RETURNING ...``; the row
comes back only when it was inserted or the WHERE let the update through, so one
round trip both decides and reports.

MySQL/MariaDB have ``INSERT ... ON DUPLICATE KEY UPDATE`` without a WHERE (and
MySQL without RETURNING); supporting them means writing the same decision with
``IF()`` per column plus a read-back, in ``conditional_upsert`` only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Row, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.elements import ColumnElement

SQLITE_MIN = (3, 35, 0)


class UnsupportedDatabase(Exception):
    """This operation has no atomic statement written for the database in use."""


def conditional_upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    set_: Mapping[str, Any],
    where: ColumnElement[bool] | None,
    returning: Sequence[ColumnElement[Any]],
) -> Row[Any] | None:
    """Insert ``values``; on a key conflict apply ``set_`` if ``where`` holds.

    Returns the ``returning`` columns of the inserted or updated row, or None when the
    row existed and ``where`` was false. One statement; atomic on its own.
    """
    name = conn.dialect.name
    if name == "postgresql":
        stmt: Any = postgresql.insert(table).values(dict(values))
    elif name == "sqlite":
        if sqlite3.sqlite_version_info < SQLITE_MIN:
            raise UnsupportedDatabase(
                f"SQLite {sqlite3.sqlite_version} is too old: panda-daemon needs"
                f" {'.'.join(map(str, SQLITE_MIN))} or newer (INSERT ... RETURNING)"
            )
        stmt = sqlite_dialect.insert(table).values(dict(values))
    else:
        raise UnsupportedDatabase(
            f"atomic leases are written for PostgreSQL and SQLite; {name!r} is not supported yet"
            " (see pandaserver/db/upsert.py)"
        )
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=dict(set_), where=where)
    result: Row[Any] | None = conn.execute(stmt.returning(*returning)).one_or_none()
    return result

"""One atomic insert-or-update-where statement, and what it decided.

PostgreSQL (9.5+) and SQLite (3.35+, for RETURNING) both spell it
``INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE ... RETURNING ...``; the row
comes back only when it was inserted or the WHERE let the update through, so one
round trip both decides and reports.

MySQL/MariaDB have ``INSERT ... ON DUPLICATE KEY UPDATE`` without a WHERE and (MySQL)
without RETURNING, and evaluate its assignments left to right, each seeing the new
values of the earlier ones. So the decision is made once, on the old row, by the
first assignment, which keeps it in a session variable; every assignment is
``col = IF(decision, new, col)``::

    INSERT INTO t (k, a, b) VALUES (:k, (@panda_upsert_r0 := :a), :b)
    ON DUPLICATE KEY UPDATE
        a = (@panda_upsert_r0 := IF((@panda_upsert_ok := (<where>)), <new a>, a)),
        b = IF(@panda_upsert_ok, <new b>, b)

The ``returning`` columns are captured in session variables as they are written
(in VALUES for an insert, in the assignment for an update), and one more statement
on the same connection, ``SELECT @panda_upsert_ok, @panda_upsert_r0, ...``, reads
them (cast back to the column types): exactly the values this statement wrote,
whatever other sessions did since, with or without a transaction. Whether the row was granted comes from the
affected-rows count (1: inserted, 2: updated, 0: left as it was) and, for 0, the
kept decision (0 is also what an update to identical values reports). The engine
must report *affected* rows, not found rows: ``engine_from_url`` turns PyMySQL's
and mysqlclient's ``CLIENT.FOUND_ROWS`` off (SQLAlchemy turns it on), and a
connection with it on is refused. The statement is still the one atomic decision;
the read-back is the extra round trip MySQL costs. A ``set_`` expression may use
only its own column (``generation + 1``): with assignments in order, another
column could already hold its new value.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Row,
    Table,
    cast,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.functions import FunctionElement

SQLITE_MIN = (3, 35, 0)
MYSQL_FOUND_ROWS = 2  # CLIENT.FOUND_ROWS of the MySQL protocol
_OK_VAR = "@panda_upsert_ok"


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
    params: Mapping[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
) -> Row[Any] | None:
    """Insert ``values``; on a key conflict apply ``set_`` if ``where`` holds.

    Returns the ``returning`` columns of the inserted or updated row, or None when the
    row existed and ``where`` was false. One statement; atomic on its own.

    ``params`` fill ``bindparam``s of the expressions. With ``cache`` (a dict the caller
    keeps, for one shape of statement), the statement is built once per dialect and then
    only executed: building and keying a SQLAlchemy construct costs more CPU than the
    round trip itself, on every call.
    """
    name = conn.dialect.name
    if name == "mysql":
        return _mysql_upsert(conn, table, values, key, set_, where, returning, params or {})
    if cache is not None and name in cache:
        result: Row[Any] | None = conn.execute(cache[name], dict(params or {})).one_or_none()
        return result
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
            f"atomic leases are written for PostgreSQL, SQLite and MySQL/MariaDB; {name!r} is not"
            " supported (see pandaserver/db/upsert.py)"
        )
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=dict(set_), where=where)
    stmt = stmt.returning(*returning)
    if cache is not None:
        cache[name] = stmt
    result = conn.execute(stmt, dict(params or {})).one_or_none()
    return result


class _assign(FunctionElement[Any]):
    """``(@variable := expression)``: MySQL's assignment inside an expression."""

    inherit_cache = True
    name = "panda_assign"


@compiles(_assign, "mysql")
def _assign_mysql(element: _assign, compiler: SQLCompiler, **kw: Any) -> str:
    variable, expression = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"({variable} := {expression})"


def _typed(column: Column[Any], value: Any) -> ColumnElement[Any]:
    if isinstance(value, ClauseElement):
        return value  # type: ignore[return-value]
    return literal(value, type_=column.type)


def _check_found_rows(conn: Connection) -> None:
    flag = getattr(conn.connection.dbapi_connection, "client_flag", None)
    if isinstance(flag, int) and flag & MYSQL_FOUND_ROWS:
        raise UnsupportedDatabase(
            "this MySQL connection reports found rows (CLIENT.FOUND_ROWS), not affected rows;"
            " create the engine with pandaserver.db.engine.engine_from_url"
        )


def _mysql_upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    set_: Mapping[str, Any],
    where: ColumnElement[bool] | None,
    returning: Sequence[ColumnElement[Any]],
    params: Mapping[str, Any],
) -> Row[Any] | None:
    _check_found_rows(conn)
    names: list[str] = []
    for element in returning:
        column = getattr(element, "name", None)
        if not isinstance(column, str) or table.c.get(column) is not element:
            raise ValueError(f"returning must name columns of {table.name}, got: {element!r}")
        if column not in values:
            raise ValueError(f"returning column {column!r} must be among the inserted values")
        names.append(column)
    captured: dict[str, ColumnElement[Any]] = {
        n: literal_column(f"@panda_upsert_r{i}") for i, n in enumerate(names)
    }
    ok: ColumnElement[Any] = literal_column(_OK_VAR)

    inserted: dict[str, Any] = {}
    for name, value in values.items():
        typed = _typed(table.c[name], value)
        inserted[name] = _assign(captured[name], typed) if name in captured else typed

    order = list(set_) + [n for n in names if n not in set_]
    if where is not None and not order:
        order = [key[0]]  # an assignment to decide in, even when nothing changes
    assignments: list[tuple[str, Any]] = []
    for name in order:
        column = table.c[name]
        new: Any = _typed(column, set_[name]) if name in set_ else column
        others = [c for c in visitors.iterate(new)
                  if isinstance(c, Column) and c.table is table and c.name != name]
        if others:
            raise ValueError(f"on MySQL the new value of {name!r} may use only its own column,"
                             f" not {', '.join(sorted(str(c.name) for c in others))}")
        if where is not None:
            decision = _assign(ok, where) if not assignments else ok
            new = func.IF(decision, new, column, type_=column.type)
        if name in captured:
            new = _assign(captured[name], new)
        assignments.append((name, new))

    stmt = mysql_dialect.insert(table).values(inserted).on_duplicate_key_update(assignments)
    affected = conn.execute(stmt, dict(params)).rowcount
    read = select(type_coerce(ok, Boolean()).label("panda_upsert_granted"),
                  *[cast(captured[n], table.c[n].type).label(n) for n in names])
    row = conn.execute(read).one()
    if affected == 1 or where is None:  # inserted, or nothing to decide
        return row
    # 2: updated, so the decision was true; 0: left as it was, by a false decision or
    # an update to identical values
    return row if affected == 2 or row.panda_upsert_granted else None

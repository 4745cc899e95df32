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

``upsert_or_else`` adds ``otherwise``: assignments made instead when the row exists and
``where`` is false (a refused lease counts the refusal), and returns the row either way,
so the refused caller learns the row as it now is:

- PostgreSQL, one statement::

      WITH attempt AS (INSERT ... ON CONFLICT (k) DO UPDATE SET ... WHERE ...
                       RETURNING ..., true),
           lost AS (UPDATE t SET <otherwise> WHERE k = :k
                      AND NOT EXISTS (SELECT 1 FROM attempt) RETURNING ..., false)
      SELECT * FROM attempt UNION ALL SELECT * FROM lost

  ``lost`` must modify the row, not merely read it: a read sees the statement's snapshot,
  maybe the row before a concurrent winner committed, while an UPDATE in READ COMMITTED
  re-reads the newest committed version (EvalPlanQual) and holds the row lock the
  attempt took. The one case it cannot see: a row inserted by a concurrent statement
  after this one's snapshot (the first grant ever); then neither part returns a row and
  ``UPDATE ... RETURNING`` runs as a second statement.
- SQLite: the upsert, then (refused) ``UPDATE ... RETURNING`` as a second statement in
  the same autocommit session; SQLite has one writer at a time, so it sees the newest row.
- MySQL/MariaDB: in the same one statement, every assignment is
  ``col = IF(decision, <set_ value or col>, <otherwise value or col>)`` and the read-back
  returns the captured values either way (the row as locked and written by this
  statement). The decision is the kept ``@panda_upsert_ok`` (an update always reports 2
  affected rows now); 1 affected row is an insert (``@panda_upsert_ok`` is then stale).
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Row,
    Table,
    Text,
    cast,
    false,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement
from sqlalchemy.sql.functions import FunctionElement

SQLITE_MIN = (3, 35, 0)
MYSQL_FOUND_ROWS = 2  # CLIENT.FOUND_ROWS of the MySQL protocol
_OK_VAR = "@panda_upsert_ok"
GRANTED = "panda_upsert_granted"  # the decision, a column of the rows returned
ANNOUNCED = "panda_upsert_announced"  # ``announce``'s value, a column on PostgreSQL


class UnsupportedDatabase(Exception):
    """This operation has no atomic statement written for the database in use."""


def dialect_insert(name: str) -> Any:
    """The ``insert`` construct of SQLAlchemy's dialect ``name`` (``postgresql``, ``sqlite``,
    ``mysql``), its module imported on first use: the statements' modules load no dialect
    at import, so a master on SQLite or PostgreSQL never loads MySQL's (about 10-20 ms of
    its start-up; ``tables.py``'s partial indexes load PostgreSQL's and SQLite's)."""
    return importlib.import_module(f"sqlalchemy.dialects.{name}").insert


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
    if conn.dialect.name == "mysql":
        granted, row = _mysql_upsert(conn, table, values, key, set_, where, None, returning,
                                     params or {}, cache)
        return row if granted else None
    built = cache.get(conn.dialect.name) if cache is not None else None
    if built is None:
        built = _upsert(conn.dialect.name, table, values, key, set_, where).returning(
            *returning)
        if cache is not None:
            cache[conn.dialect.name] = built
    result: Row[Any] | None = conn.execute(built, dict(params or {})).one_or_none()
    return result


def upsert_or_else(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    set_: Mapping[str, Any],
    where: ColumnElement[bool],
    otherwise: Mapping[str, Any],
    returning: Sequence[ColumnElement[Any]],
    params: Mapping[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    announce: ColumnElement[Any] | None = None,
    also: Callable[[Any], Sequence[Any]] | None = None,
) -> tuple[bool, Row[Any] | None]:
    """``conditional_upsert``, and when the row exists and ``where`` is false, apply
    ``otherwise`` to it instead (see the module docstring for each database).

    ``announce`` (PostgreSQL only, ignored elsewhere): an expression over the granted row,
    returned as the column ``ANNOUNCED`` by the ``attempt`` part only, so it is evaluated
    once per grant inside the same statement and never on a refusal (a ``pg_notify``: it
    is delivered only if the grant commits). Its value is text; NULL when refused.

    ``also`` (PostgreSQL only): given the grant's CTE (``attempt``, a row only when
    granted), data-modifying CTEs made part of the same statement (a lease grant's run
    rows: ``pandaserver/db/stores/grantrun.py``); other databases ignore it (the caller
    does that work in its transaction).

    Returns (granted, row): the ``returning`` columns as inserted or updated when granted;
    when refused, of the row as it is after ``otherwise`` (the newest committed version,
    never an older snapshot), or None if there is no row (rows deleted meanwhile).
    ``params`` and ``cache`` as for ``conditional_upsert``.
    """
    name = conn.dialect.name
    bound = dict(params or {})
    if name == "mysql":
        return _mysql_upsert(conn, table, values, key, set_, where, otherwise, returning,
                             bound, cache)
    built = cache.get(name) if cache is not None else None
    if built is None:
        upsert = _upsert(name, table, values, key, set_, where)
        matches = [table.c[k] == values[k] for k in key]
        refused = update(table).where(*matches).values(dict(otherwise))
        if name == "postgresql":
            told = [] if announce is None else [cast(announce, Text()).label(ANNOUNCED)]
            untold = [] if announce is None else [null().cast(Text()).label(ANNOUNCED)]
            attempt = upsert.returning(*returning, true().label(GRANTED), *told).cte("attempt")
            tried = select(literal_column("1")).select_from(attempt).exists()
            lost = refused.where(~tried).returning(*returning, false().label(GRANTED),
                                                   *untold)
            lost_cte = lost.cte("lost")
            first: Any = select(attempt).union_all(select(lost_cte))
            if also is not None:
                first = first.add_cte(*also(attempt))
        else:
            first = upsert.returning(*returning, true().label(GRANTED))
        built = (first, refused.returning(*returning, false().label(GRANTED)))
        if cache is not None:
            cache[name] = built
    row: Row[Any] | None = conn.execute(built[0], bound).one_or_none()
    if row is None:  # SQLite refused; PostgreSQL raced with the row's first insert
        row = conn.execute(built[1], bound).one_or_none()
    return (bool(row._mapping[GRANTED]) if row is not None else False), row


def _upsert(name: str, table: Table, values: Mapping[str, Any], key: Sequence[str],
            set_: Mapping[str, Any], where: ColumnElement[bool] | None) -> Any:
    if name == "postgresql":
        stmt: Any = dialect_insert("postgresql")(table).values(dict(values))
    elif name == "sqlite":
        if sqlite3.sqlite_version_info < SQLITE_MIN:
            raise UnsupportedDatabase(
                f"SQLite {sqlite3.sqlite_version} is too old: panda-daemon needs"
                f" {'.'.join(map(str, SQLITE_MIN))} or newer (INSERT ... RETURNING)"
            )
        stmt = dialect_insert("sqlite")(table).values(dict(values))
    else:
        raise UnsupportedDatabase(
            f"atomic leases are written for PostgreSQL, SQLite and MySQL/MariaDB; {name!r} is not"
            " supported (see pandaserver/db/base/upsert.py)"
        )
    return stmt.on_conflict_do_update(index_elements=list(key), set_=dict(set_), where=where)


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
            " create the engine with pandaserver.db.base.engine.engine_from_url"
        )


def _mysql_upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    set_: Mapping[str, Any],
    where: ColumnElement[bool] | None,
    otherwise: Mapping[str, Any] | None,
    returning: Sequence[ColumnElement[Any]],
    params: Mapping[str, Any],
    cache: dict[str, Any] | None,
) -> tuple[bool, Row[Any] | None]:
    """(granted, the captured ``returning`` values); see the module docstring."""
    _check_found_rows(conn)
    built = cache.get("mysql") if cache is not None else None
    if built is None:
        built = _mysql_statements(table, values, key, set_, where, otherwise or {}, returning)
        if cache is not None:
            cache["mysql"] = built
    stmt, read = built
    affected = conn.execute(stmt, dict(params)).rowcount
    row = conn.execute(read).one()
    if affected == 1 or where is None:  # inserted (the kept decision is stale), or no decision
        return True, row
    # updated (2) or left as it was (0, also an update to identical values): the decision
    # the statement kept
    return bool(row._mapping[GRANTED]), row


def _mysql_statements(
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    set_: Mapping[str, Any],
    where: ColumnElement[bool] | None,
    otherwise: Mapping[str, Any],
    returning: Sequence[ColumnElement[Any]],
) -> tuple[Any, Any]:
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

    order = list(set_) + [n for n in otherwise if n not in set_]
    order += [n for n in names if n not in order]
    if where is not None and not order:
        order = [key[0]]  # an assignment to decide in, even when nothing changes
    assignments: list[tuple[str, Any]] = []
    for name in order:
        column = table.c[name]
        new: Any = _typed(column, set_[name]) if name in set_ else column
        other: Any = _typed(column, otherwise[name]) if name in otherwise else column
        mentioned = [c for e in (new, other) for c in visitors.iterate(e)
                     if isinstance(c, Column) and c.table is table and c.name != name]
        if mentioned:
            raise ValueError(f"on MySQL the new value of {name!r} may use only its own column,"
                             f" not {', '.join(sorted({str(c.name) for c in mentioned}))}")
        if where is not None:
            decision = _assign(ok, where) if not assignments else ok
            new = func.IF(decision, new, other, type_=column.type)
        if name in captured:
            new = _assign(captured[name], new)
        assignments.append((name, new))

    stmt = dialect_insert("mysql")(table).values(inserted).on_duplicate_key_update(assignments)
    read = select(type_coerce(ok, Boolean()).label(GRANTED),
                  *[cast(captured[n], table.c[n].type).label(n) for n in names])
    return stmt, read

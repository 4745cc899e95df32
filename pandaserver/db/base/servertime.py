"""The database's own clock, and a timestamp type that is UTC on every backend.

Anything compared across servers (lease expiry, the fleet-wide next due time,
heartbeats) is computed *inside* the database from its clock, never from a
server's clock, so skew between servers cannot cause a double run.

``db_now_expr()``, ``db_now_plus(seconds)`` and ``next_due_after(due, period, tolerance)``
(the fleet-wide next due time after a grant: ``due_tolerance`` states the rule) are SQL
expressions usable in any statement;
``seconds_between(a, b)`` is ``a - b`` in seconds as a float. Each compiles per dialect:

============  =============================================  ==========================
dialect       now                                            storage
============  =============================================  ==========================
postgresql    ``statement_timestamp()`` (stable in a         ``timestamp with time zone``
              statement, unlike ``now()`` it is not frozen
              at the start of a longer transaction)
sqlite        ``strftime('%Y-%m-%d %H:%M:%f000', 'now')``    text, 26 characters, UTC
              ('now' is stable within one statement)
mysql         ``UTC_TIMESTAMP(6)``                           ``DATETIME(6)``, UTC
============  =============================================  ==========================

On SQLite the text form is exactly SQLAlchemy's DATETIME storage format
(``YYYY-MM-DD HH:MM:SS.ffffff``), so values written by SQL and values bound from
Python compare correctly as text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Dialect, func, select, type_coerce
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Float, TypeDecorator

from pandaserver.db.direct.duerule import DUE_TOLERANCE as DUE_TOLERANCE
from pandaserver.db.direct.duerule import DUE_TOLERANCE_PARTS as DUE_TOLERANCE_PARTS
from pandaserver.db.direct.duerule import due_tolerance as due_tolerance

_SQLITE_FORMAT = "'%Y-%m-%d %H:%M:%f000'"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC; always read back as aware UTC.

    Naive datetimes are refused on the way in: a naive value is ambiguous, and
    every time this package writes comes from the database clock anyway.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "mysql":  # the dialect in use: imported already
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"a timezone-aware datetime is required, got naive: {value!r}")
        value = value.astimezone(UTC)
        if dialect.name in ("sqlite", "mysql"):
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a raw SQLite text value that bypassed the impl
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class db_now_expr(FunctionElement[datetime]):
    """The database's current time (UTC), stable within one statement."""

    type = UtcDateTime()
    inherit_cache = True
    name = "db_now"


class db_now_plus(FunctionElement[datetime]):
    """The database's current time plus a number of seconds (may be negative or fractional)."""

    type = UtcDateTime()
    inherit_cache = True
    name = "db_now_plus"


class seconds_between(FunctionElement[float]):
    """``a - b`` in seconds, as a float (NULL when either is NULL)."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(db_now_expr)
def _now_default(element: db_now_expr, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now_expr, "postgresql")
def _now_pg(element: db_now_expr, compiler: SQLCompiler, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(db_now_expr, "sqlite")
def _now_sqlite(element: db_now_expr, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime({_SQLITE_FORMAT}, 'now')"


@compiles(db_now_expr, "mysql")
def _now_mysql(element: db_now_expr, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


def _args(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> list[str]:
    return [compiler.process(arg, **kw) for arg in element.clauses]


@compiles(db_now_plus)
def _plus_default(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = _args(element, compiler, **kw)
    return f"(CURRENT_TIMESTAMP + ({seconds}) * INTERVAL '1' SECOND)"


@compiles(db_now_plus, "postgresql")
def _plus_pg(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = _args(element, compiler, **kw)
    return f"(statement_timestamp() + CAST({seconds} AS DOUBLE PRECISION) * INTERVAL '1 second')"


@compiles(db_now_plus, "sqlite")
def _plus_sqlite(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = _args(element, compiler, **kw)
    return f"strftime({_SQLITE_FORMAT}, 'now', printf('%+.6f seconds', {seconds}))"


@compiles(db_now_plus, "mysql")
def _plus_mysql(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = _args(element, compiler, **kw)
    return f"(UTC_TIMESTAMP(6) + INTERVAL ROUND(({seconds}) * 1000000) MICROSECOND)"


@compiles(seconds_between)
def _between_default(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    return f"EXTRACT(EPOCH FROM ({a} - {b}))"


@compiles(seconds_between, "postgresql")
def _between_pg(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    # date_part is double precision; EXTRACT is numeric since PostgreSQL 14 and, cast back,
    # costs about three times as much per row (what /metrics' window sums pay per row)
    return f"date_part('epoch', {a} - {b})"


@compiles(seconds_between, "sqlite")
def _between_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    # whole seconds and microseconds as integers, then one division: exact to the microsecond
    # like the other dialects (julianday's float is off by tens of microseconds, so a
    # duration of exactly 0.1 s could fall either side of a histogram's 0.1 bucket)
    # (whole seconds of the text without its fraction: SQLite rounds a fraction to the
    # millisecond first, so .9999995 would count as the next second)
    return (f"(((CAST(strftime('%s', substr({a}, 1, 19)) AS INTEGER)"
            f" - CAST(strftime('%s', substr({b}, 1, 19)) AS INTEGER))"
            f" * 1000000 + CAST(substr({a}, 21) AS INTEGER) - CAST(substr({b}, 21) AS INTEGER))"
            " / 1000000.0)")


@compiles(seconds_between, "mysql")
def _between_mysql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    a, b = _args(element, compiler, **kw)
    # divided by a double: by the DECIMAL 1000000.0 the quotient keeps 4 decimals only
    # (div_precision_increment), so 0.001001 s became 0.0010 and fell in the 0.001 bucket
    return f"(TIMESTAMPDIFF(MICROSECOND, {b}, {a}) / 1e6)"


def seconds_from_now(value: ColumnElement[Any]) -> seconds_between:
    """``value - db now`` in seconds."""
    return seconds_between(value, db_now_expr())


def db_now(conn: Connection) -> datetime:
    """Read the database's clock (aware UTC).

    On PostgreSQL this is ``clock_timestamp()``, the real time even inside a long
    transaction; elsewhere the statement time.
    """
    expr: ColumnElement[datetime] = (
        type_coerce(func.clock_timestamp(), UtcDateTime())
        if conn.dialect.name == "postgresql"
        else db_now_expr()
    )
    value = conn.execute(select(expr)).scalar_one()
    if not isinstance(value, datetime):  # pragma: no cover - the clock is never NULL
        raise RuntimeError(f"the database returned no current time: {value!r}")
    return value


class next_due_after(FunctionElement[datetime]):
    """``max(due + period, db now + period - tolerance)``: when a script due at ``due`` and
    granted now is next due (``due_tolerance`` states the rule). ``period`` and
    ``tolerance`` are seconds. Exact to the microsecond (the millisecond on SQLite, whose
    clock has millisecond steps), so a run on time keeps its grid over any number of
    periods.
    """

    type = UtcDateTime()
    inherit_cache = True
    name = "next_due_after"


@compiles(next_due_after, "postgresql")
def _after_pg(element: next_due_after, compiler: SQLCompiler, **kw: Any) -> str:
    due, period, tolerance = _args(element, compiler, **kw)

    def micro(seconds: str) -> str:  # whole microseconds: exact, never rounded back
        return (f"CAST(ROUND(CAST({seconds} AS NUMERIC) * 1000000) AS DOUBLE PRECISION)"
                " * INTERVAL '1 microsecond'")

    return (f"GREATEST({due} + {micro(period)},"
            f" statement_timestamp() + {micro(f'({period}) - ({tolerance})')})")


@compiles(next_due_after, "sqlite")
def _after_sqlite(element: next_due_after, compiler: SQLCompiler, **kw: Any) -> str:
    due, period, tolerance = _args(element, compiler, **kw)
    # both texts in one format (ms and three zeros), so the greater text is the later time
    return (f"max(strftime({_SQLITE_FORMAT}, {due}, printf('%+.3f seconds', {period})),"
            f" strftime({_SQLITE_FORMAT}, 'now',"
            f" printf('%+.3f seconds', ({period}) - ({tolerance}))))")


@compiles(next_due_after, "mysql")
def _after_mysql(element: next_due_after, compiler: SQLCompiler, **kw: Any) -> str:
    due, period, tolerance = _args(element, compiler, **kw)
    return (f"GREATEST({due} + INTERVAL ROUND(({period}) * 1000000) MICROSECOND,"
            f" UTC_TIMESTAMP(6) + INTERVAL ROUND((({period}) - ({tolerance})) * 1000000)"
            " MICROSECOND)")

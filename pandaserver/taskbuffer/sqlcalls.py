"""PanDA's generic SQL calls on a SQLAlchemy engine: one statement (or one batch) per call,
in a transaction of its own, bounded by a statement timeout, the connection handed back
clean whatever happened.

The return conventions are PanDA's (``DBProxy.querySQLS``/``executemanySQL`` as PanDA runs
them on PostgreSQL); docs/database.md, "SQL from scripts", lists them and the differences.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.sql import Executable

from pandaserver.db.base.engine import describe_db_error
from pandaserver.taskbuffer.oraclesql import first_keyword, translate, untranslated_hint

log = logging.getLogger("pandaserver.taskbuffer")

# statements whose result is a row count, as PanDA decides it (by the first word)
DML = ("INSERT", "UPDATE", "DELETE")
# seconds one statement may run by default (a script may change tbuf.statement_timeout)
STATEMENT_TIMEOUT = 600.0
SQLITE_CHECK_EVERY = 10_000  # SQLite virtual-machine steps between two looks at the clock


class Refused(ValueError):
    """A call refused before it reached the database (the message says why)."""


def bind_params(var_map: Mapping[str, Any] | None) -> dict[str, Any]:
    """PanDA's bind map (keys ``":name"``, or ``"name"``) as SQLAlchemy's (``"name"``)."""
    if var_map is None:
        return {}
    if not isinstance(var_map, Mapping):
        raise Refused(f"varMap must be a dict of bind variables such as {{':name': value}},"
                      f" got: {type(var_map).__name__}")
    params = {}
    for key, value in var_map.items():
        if not isinstance(key, str) or not key.lstrip(":"):
            raise Refused(f"a bind variable's name must be a string such as ':name',"
                          f" got: {key!r}")
        params[key[1:] if key.startswith(":") else key] = value
    return params


def check_timeout(seconds: float) -> float:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise Refused(f"tbuf.statement_timeout must be a positive number of seconds,"
                      f" got: {seconds!r}")
    return float(seconds)


class SqlCalls:
    """The calls of one ``tbuf``: ``engine()`` gives its engine, ``label()`` the run's label
    for log lines, ``schemas`` PanDA's schema names as the configuration renames them."""

    def __init__(self, engine: Callable[[], Engine], label: Callable[[], str],
                 schemas: Mapping[str, str | None] | None = None) -> None:
        self._engine = engine
        self._label = label
        self.schemas = dict(schemas or {})
        self.statement_timeout = STATEMENT_TIMEOUT

    # --- the calls ------------------------------------------------------------------

    def query(self, call: str, sql: str, var_map: Mapping[str, Any] | None
              ) -> tuple[None, list[tuple[Any, ...]] | int] | tuple[int, None]:
        """``(None, rows)``, ``(None, rowcount)`` for INSERT/UPDATE/DELETE, ``(-1, None)``
        on an error (logged)."""
        try:
            params = bind_params(var_map)
            statement = self._text(sql)
            dml = first_keyword(sql) in DML
            with self._transaction() as conn:
                result = conn.execute(statement, params)
                if dml or not result.returns_rows:
                    value: list[tuple[Any, ...]] | int = result.rowcount
                else:
                    value = [tuple(row) for row in result]
        except Exception as exc:
            self._failed(call, sql, exc)
            return -1, None
        return None, value

    def execute_many(self, call: str, sql: str, var_maps: Sequence[Mapping[str, Any]]
                     ) -> int | None:
        """The total row count of INSERT/UPDATE/DELETE run once per map, all in one
        transaction; None on an error (logged, nothing applied) or another statement."""
        try:
            if first_keyword(sql) not in DML:
                raise Refused("executemanySQL runs INSERT, UPDATE or DELETE only, as in PanDA;"
                              " use querySQLS for other statements")
            if isinstance(var_maps, Mapping | str | bytes):
                raise Refused("varMaps must be a list of dicts of bind variables, one per"
                              f" execution, got: {type(var_maps).__name__}")
            batch = [bind_params(var_map) for var_map in var_maps]
            statement = self._text(sql)
            if not batch:
                return 0
            total = 0
            with self._transaction() as conn:
                for params in batch:
                    total += conn.execute(statement, params).rowcount
        except Exception as exc:
            self._failed(call, sql, exc)
            return None
        return total

    def read(self, statement: Executable, params: Mapping[str, Any] | None = None
             ) -> list[tuple[Any, ...]]:
        """Rows of a SQLAlchemy statement, bounded and committed like the calls (errors
        raise: the caller decides)."""
        with self._transaction() as conn:
            return [tuple(row) for row in conn.execute(statement, dict(params or {}))]

    # --- the machinery --------------------------------------------------------------

    def _text(self, sql: str) -> Executable:
        if not isinstance(sql, str) or not sql.strip():
            raise Refused(f"sql must be a non-empty string, got: {sql!r}")
        return text(translate(sql, self._engine().dialect, self.schemas))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A pooled connection in a transaction bounded by ``statement_timeout``, committed
        when the body returns, rolled back when it raises; the session's settings are
        restored before it goes back to the pool, which rolls back whatever is left."""
        seconds = check_timeout(self.statement_timeout)
        with self._engine().connect() as conn:
            with _bounded(conn, seconds):
                yield conn
                conn.commit()

    def _failed(self, call: str, sql: str, exc: BaseException) -> None:
        if isinstance(exc, Refused):
            reason = str(exc)
        else:
            try:
                engine: Engine | None = self._engine()
            except Exception:  # the engine itself could not be made: the error says why
                engine = None
            url = engine.url if engine is not None else None
            reason = f"database error: {describe_db_error(exc, url)}"
            if engine is not None and isinstance(sql, str):
                hint = untranslated_hint(translate(sql, engine.dialect, self.schemas))
                if hint:
                    reason = f"{reason}; {hint}"
        log.error("%s %s: %s [SQL: %s]", self._label(), call, reason, _short(sql))


def _short(sql: Any, width: int = 160) -> str:
    flat = re.sub(r"\s+", " ", str(sql)).strip()
    return flat if len(flat) <= width else flat[:width - 3] + "..."


@contextmanager
def _bounded(conn: Connection, seconds: float) -> Iterator[None]:
    """The statement timeout (and UTC as the session's time zone, as PanDA sets it) for
    what runs on ``conn`` inside; on error the transaction is rolled back here."""
    name = conn.dialect.name
    try:
        if name == "postgresql":
            # transaction-local: gone at commit or rollback
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, round(seconds * 1000))};"
                                 " SET LOCAL TIME ZONE 'UTC'")
            yield
        elif name == "mysql":
            with _mysql_session(conn, seconds):
                yield
        elif name == "sqlite":
            with _sqlite_deadline(conn, seconds):
                yield
        else:
            yield
    except BaseException:
        conn.rollback()
        raise


@contextmanager
def _mysql_session(conn: Connection, seconds: float) -> Iterator[None]:
    """MariaDB's ``max_statement_time`` (MySQL: ``max_execution_time``, SELECT only), the
    InnoDB lock wait (which neither bounds) and the UTC time zone for the session, put back
    to the server's defaults afterwards."""
    if getattr(conn.dialect, "is_mariadb", False):
        limit = f"@@session.max_statement_time = {seconds:.3f}"
        reset = "@@session.max_statement_time = DEFAULT"
    else:
        limit = f"@@session.max_execution_time = {max(1, round(seconds * 1000))}"
        reset = "@@session.max_execution_time = DEFAULT"
    lock_wait = max(1, math.ceil(seconds))
    limit += f", @@session.innodb_lock_wait_timeout = {lock_wait}"
    reset += ", @@session.innodb_lock_wait_timeout = DEFAULT"
    conn.exec_driver_sql(f"SET {limit}, @@session.time_zone = '+00:00'")
    try:
        yield
    finally:
        try:
            conn.rollback()  # nothing if the body committed
            conn.exec_driver_sql(f"SET {reset}, @@session.time_zone = DEFAULT")
            conn.commit()
        except Exception:
            # a session that cannot be put back is not handed to the next caller
            conn.invalidate()


@contextmanager
def _sqlite_deadline(conn: Connection, seconds: float) -> Iterator[None]:
    """SQLite has no statement timeout: a progress handler interrupts a statement that runs
    past the deadline (waits for another writer stay bounded by the busy timeout)."""
    raw = conn.connection.driver_connection
    deadline = time.monotonic() + seconds

    def past_deadline() -> int:
        return 1 if time.monotonic() > deadline else 0

    raw.set_progress_handler(past_deadline, SQLITE_CHECK_EVERY)  # type: ignore[union-attr]
    try:
        yield
    finally:
        raw.set_progress_handler(None, 0)  # type: ignore[union-attr]

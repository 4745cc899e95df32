"""Statements an idle master sends every heartbeat, compiled once and run on the driver.

A master with nothing to do still beats and reads the operators' commands every half minute.
Through SQLAlchemy's execution path each such statement costs more CPU than the database
spends on it: a cache key built by walking the construct, an execution context, a cursor
result and its row objects, and after 30 s asleep all of that code and data come back from
main memory (about 0.6-0.9 ms a statement, against 0.04 ms when repeated at once).
``Prepared`` compiles a statement once per dialect (its SQL text, the order of its
parameters, the types' bind and result processors, all from SQLAlchemy's own compiler) and
runs it on a DB-API cursor of a pooled connection: only the driver's call and the
processors run each time.

For SQLite and PostgreSQL (``supported``); other databases keep SQLAlchemy's path. A
driver's error is raised as SQLAlchemy's (``DBAPIError``), as a ``Connection`` would, and
the connection it came from is discarded rather than handed back to the pool. Writes are
committed (a no-op on the master's autocommit connections).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import ClauseElement

SUPPORTED = ("sqlite", "postgresql")
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positional: bool
    binds: tuple[tuple[str, Any, Processor], ...]  # (name, default value, bind processor)
    results: tuple[Processor, ...]  # per column returned

    def parameters(self, given: Mapping[str, Any]) -> Any:
        values = []
        for name, default, processor in self.binds:
            value = given[name] if name in given else default
            values.append(processor(value) if processor is not None else value)
        if self.positional:
            return tuple(values)
        return {name: value for (name, _, _), value in zip(self.binds, values, strict=True)}

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(value if processor is None else processor(value)
                     for processor, value in zip(self.results, raw, strict=False))


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled: Any = statement.compile(dialect=dialect)
    sql = str(compiled.string)
    if "POSTCOMPILE" in sql:  # an IN list expanded at execution: not a fixed text
        raise ValueError("a prepared statement cannot hold an expanding IN list: spell it"
                         " with OR of equalities")
    names = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
    binds = []
    for name in names:
        param = compiled.binds[name]
        binds.append((name, param.value if not param.required else None,
                      param.type.dialect_impl(dialect).bind_processor(dialect)))
    columns = getattr(statement, "exported_columns", ())
    results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                    for column in columns)
    return _Compiled(sql, bool(compiled.positional), tuple(binds), results)


class Prepared:
    """One statement (a SQLAlchemy construct with ``bindparam``s), compiled once per dialect."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    @staticmethod
    def supported(engine: Engine) -> bool:
        return engine.dialect.name in SUPPORTED

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            found = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return found


class Session:
    """One pooled connection for a few prepared statements (``with run(engine) as s``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._raw: Any = None

    def __enter__(self) -> Session:
        self._raw = self.engine.raw_connection()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        if error is not None:  # whatever state it is in, it is not reused
            raw.invalidate()
        raw.close()

    @property
    def dbapi_connection(self) -> Any:
        """The driver's connection in use (None outside the with block)."""
        return None if self._raw is None else self._raw.dbapi_connection

    def rows(self, prepared: Prepared, params: Mapping[str, Any] | None = None,
             write: bool = False) -> list[tuple[Any, ...]]:
        """Run ``prepared`` with ``params``; the rows it returns (types processed)."""
        assert self._raw is not None, "a Session is used inside its with block"
        compiled = prepared.compiled(self.dialect)
        parameters = compiled.parameters(params or {})
        dbapi: Any = self._raw.dbapi_connection
        try:
            cursor = dbapi.cursor()
            try:
                cursor.execute(compiled.sql, parameters)
                fetched = cursor.fetchall() if cursor.description is not None else []
            finally:
                cursor.close()
            if write:
                dbapi.commit()  # nothing to commit on an autocommit connection
        except self.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(compiled.sql, parameters, exc,
                                      self.dialect.loaded_dbapi.Error,
                                      dialect=self.dialect) from exc
        return [compiled.row(row) for row in fetched]


def run(engine: Engine) -> Session:
    return Session(engine)

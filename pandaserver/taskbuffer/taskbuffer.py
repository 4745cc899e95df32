"""``TaskBuffer``: what a script's ``main(tbuf=...)`` gets.

It carries an SQLAlchemy engine (``tbuf.engine``), the context of the run
(``tbuf.context``: script name, run id, lease generation), PanDA's generic SQL and
configuration calls (``querySQLS``, ``querySQL``, ``executemanySQL``, ``getConfigValue``:
``pandaserver/taskbuffer/sqlcalls.py``, ``pandaserver/taskbuffer/configtable.py``;
docs/database.md, "SQL from scripts") and PanDA's
process-lock calls with their original arguments, meaning and return values:

``lockProcess_PANDA(component, pid, time_limit=5, force=False) -> bool``
    Take the lock of ``component`` for ``pid`` (any string; PanDA scripts use
    "host-pid-..."), unless someone (the same ``pid`` included) locked it less than
    ``time_limit`` minutes ago. ``force`` takes it anyway. False on a database error.
``unlockProcess_PANDA(component, pid) -> bool``
    Remove the lock if ``pid`` holds it. True unless the database failed (also when
    there was nothing to remove), as in PanDA.
``checkProcessLock_PANDA(component, pid, time_limit, check_base=False)``
    ``(True, locked_time)`` when a lock younger than ``time_limit`` minutes is held by
    another pid (with ``check_base``, one whose name does not start with ``pid``);
    else ``(False, None)``, also on a database error.

Differences from PanDA: times are the database's clock in UTC, and ``locked_time``
is an aware datetime; taking a lock is one atomic statement instead of
select-for-update, delete and insert; the lock table is ``panda_process_lock``,
keyed by component only.

Engines do not survive ``fork``: build the TaskBuffer in the worker with
``TaskBuffer.from_config(cfg)``; its engine is created on first use, and recreated if
first used in another process than the one that created it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from pandaserver.config import PandaConfig
from pandaserver.db.base.engine import describe_db_error, engine_from_url, make_engine
from pandaserver.db.base.servertime import db_now_expr, db_now_plus
from pandaserver.db.base.tables import panda_process_lock
from pandaserver.db.base.upsert import conditional_upsert
from pandaserver.taskbuffer import configtable
from pandaserver.taskbuffer.context import RunContext
from pandaserver.taskbuffer.oraclesql import SCHEMA_KEYS
from pandaserver.taskbuffer.sqlcalls import STATEMENT_TIMEOUT, SqlCalls, check_timeout

log = logging.getLogger(__name__)


class TaskBuffer:
    def __init__(
        self,
        engine: Engine | None = None,
        context: RunContext | None = None,
        *,
        engine_factory: Callable[[], Engine] | None = None,
        schemas: Mapping[str, str | None] | None = None,
    ) -> None:
        """Use ``engine`` (owned by the caller), or build one lazily with ``engine_factory``.
        ``schemas``: what PanDA's schema prefixes (``ATLAS_PANDA`` ...) become in SQL
        (None or absent: dropped)."""
        if (engine is None) == (engine_factory is None):
            raise TypeError("give exactly one of engine and engine_factory")
        self.context = context if context is not None else RunContext()
        self._engine = engine
        self._factory = engine_factory
        self._engine_pid = os.getpid() if engine is not None else None
        self._sql = SqlCalls(lambda: self.engine, self._label, schemas)
        # connections handed out and not yet back (pool events; any thread)
        self._out: set[ConnectionPoolEntry] = set()
        self._out_lock = threading.Lock()
        if engine is not None:
            self._watch(engine)

    @classmethod
    def from_config(
        cls, cfg: PandaConfig, context: RunContext | None = None, state_dir: Path | None = None,
        url: str | None = None,
    ) -> TaskBuffer:
        """A TaskBuffer with its own engine (``[daemon] n_dbconn`` connections), made on
        first use in the process that uses it; on ``url`` instead of the configured
        database when given (a worker: its master's database)."""
        pool_size = cfg.daemon.n_dbconn

        def factory() -> Engine:
            if url is not None:
                return engine_from_url(url, pool_size=pool_size)
            return make_engine(cfg, state_dir, pool_size=pool_size)

        return cls(context=context, engine_factory=factory, schemas=schemas_of(cfg))

    @property
    def engine(self) -> Engine:
        pid = os.getpid()
        if self._engine is not None and self._engine_pid != pid:
            if self._factory is None:
                raise RuntimeError(
                    f"this TaskBuffer's engine was created in process {self._engine_pid} and"
                    f" cannot be used in process {pid}; use TaskBuffer.from_config in the worker"
                )
            # Forget the parent's pool without closing its connections (they are the parent's).
            self._engine.dispose(close=False)
            self._engine = None
        if self._engine is None:
            assert self._factory is not None
            self._engine = self._factory()
            self._engine_pid = pid
            with self._out_lock:
                self._out.clear()  # the parent's
            self._watch(self._engine)
        return self._engine

    def _watch(self, engine: Engine) -> None:
        def checkout(dbapi: Any, entry: ConnectionPoolEntry, proxy: Any) -> None:
            with self._out_lock:
                self._out.add(entry)

        def checkin(dbapi: Any, entry: ConnectionPoolEntry) -> None:
            with self._out_lock:
                self._out.discard(entry)

        event.listen(engine, "checkout", checkout)
        event.listen(engine, "checkin", checkin)
        event.listen(engine, "invalidate", lambda dbapi, entry, exc: checkin(dbapi, entry))

    def end_run(self) -> None:
        """What a worker calls when a run ends: the run's settings put back, its leftover
        connections closed."""
        self._sql.statement_timeout = STATEMENT_TIMEOUT
        self.close_leftovers()

    def close_leftovers(self) -> int:
        """Close the connections still checked out (a run that kept one, maybe inside a
        transaction holding locks): the server rolls their work back, and the pool opens
        fresh ones. Called when a run ends; returns how many were closed."""
        with self._out_lock:
            leftovers = list(self._out)
            self._out.clear()
        for entry in leftovers:
            entry.invalidate()
        if leftovers:
            log.warning("%s: %d database connection(s) left open by the run closed (their"
                        " uncommitted work rolled back)", self._label(), len(leftovers))
        return len(leftovers)

    def dispose(self) -> None:
        """Close the pooled connections of an engine this TaskBuffer created."""
        if self._factory is not None and self._engine is not None:
            if self._engine_pid == os.getpid():
                self._engine.dispose()
            else:
                self._engine.dispose(close=False)
            self._engine = None

    def _label(self) -> str:
        ctx = self.context
        return f"script={ctx.script} run={ctx.run_id}"

    def _where(self, call: str, component: str, pid: str | int) -> str:
        return f"{self._label()} {call} component={component} pid={pid}"

    # --- PanDA's generic SQL and config calls (names and arguments as in PanDA) -----

    @property
    def statement_timeout(self) -> float:
        """Seconds one statement of the calls below may run (a script may change it)."""
        return self._sql.statement_timeout

    @statement_timeout.setter
    def statement_timeout(self, seconds: float) -> None:
        self._sql.statement_timeout = check_timeout(seconds)

    def querySQLS(self, sql: str, varMap: Mapping[str, Any] | None, arraySize: int = 1000
                  ) -> tuple[None, list[tuple[Any, ...]] | int] | tuple[int, None]:
        """``(None, rows)`` (a list of tuples); ``(None, rowcount)`` for a statement that
        starts with INSERT, UPDATE or DELETE; ``(-1, None)`` on an error (logged).
        Committed. ``arraySize`` is accepted for PanDA's sake: every row is returned."""
        return self._sql.query("querySQLS", sql, varMap)

    def querySQL(self, sql: str, varMap: Mapping[str, Any] | None, arraySize: int = 1000
                 ) -> list[tuple[Any, ...]] | int | None:
        """``querySQLS``'s rows (or row count) alone; None on an error."""
        return self._sql.query("querySQL", sql, varMap)[1]

    def executemanySQL(self, sql: str, varMaps: Sequence[Mapping[str, Any]],
                       arraySize: int = 1000) -> int | None:
        """INSERT, UPDATE or DELETE once per map, in one transaction: the row count; None
        on an error or for another statement (logged; nothing applied)."""
        return self._sql.execute_many("executemanySQL", sql, varMaps)

    def getConfigValue(self, component: str, key: str, app: str = configtable.DEFAULT_APP,
                       vo: str | None = None, default: Any = None) -> Any:
        """The value of (app, component, key) in ``panda_config`` converted by its type (a
        row of another VO is not seen when ``vo`` is given); ``default`` when there is no
        such row, no table, a database error or a value that does not read as its type."""
        where = f"{self._label()} getConfigValue component={component} key={key} app={app}"
        try:
            rows = self._sql.read(configtable.lookup(component, key, app, vo))
        except Exception as exc:
            url = self._engine.url if self._engine is not None else None
            log.warning("%s: cannot read the config table, giving the default: %s", where,
                        describe_db_error(exc, url))
            return default
        if not rows:
            log.debug("%s: no such row, giving the default", where)
            return default
        value, value_json, type_name = rows[0]
        try:
            result = configtable.convert(type_name, value, value_json)
        except configtable.BadValue as exc:
            log.warning("%s: %s; giving the default", where, exc)
            return default
        return default if result is None and default is not None else result

    def _failed(self, where: str, exc: SQLAlchemyError) -> None:
        log.error("%s: database error: %s", where, describe_db_error(exc, self.engine.url))

    # --- PanDA process locks (names and arguments as in PanDA's TaskBuffer) ---------

    def lockProcess_PANDA(
        self, component: str, pid: str | int, time_limit: float = 5, force: bool = False
    ) -> bool:
        where = self._where("lockProcess_PANDA", component, pid)
        _check_minutes(time_limit)
        t = panda_process_lock
        values = {"locked_by": str(pid), "locked_time": db_now_expr()}
        condition = None if force else t.c.locked_time <= db_now_plus(-60.0 * time_limit)
        try:
            with self.engine.begin() as conn:
                row = conditional_upsert(conn, t, {"component": component, **values},
                                         ["component"], values, condition, [t.c.locked_by])
        except SQLAlchemyError as exc:
            self._failed(where, exc)
            return False
        log.debug("%s: %s", where, "locked" if row is not None else "skipped, locked by another")
        return row is not None

    def unlockProcess_PANDA(self, component: str, pid: str | int) -> bool:
        where = self._where("unlockProcess_PANDA", component, pid)
        t = panda_process_lock
        stmt = delete(t).where(t.c.component == component, t.c.locked_by == str(pid))
        try:
            with self.engine.begin() as conn:
                removed = conn.execute(stmt).rowcount
        except SQLAlchemyError as exc:
            self._failed(where, exc)
            return False
        log.debug("%s: %s", where, "unlocked" if removed else "was not locked by this pid")
        return True

    def checkProcessLock_PANDA(
        self, component: str, pid: str | int, time_limit: float, check_base: bool = False
    ) -> tuple[bool, datetime | None]:
        where = self._where("checkProcessLock_PANDA", component, pid)
        _check_minutes(time_limit)
        t = panda_process_lock
        stmt = select(t.c.locked_by, t.c.locked_time).where(
            t.c.component == component, t.c.locked_time > db_now_plus(-60.0 * time_limit)
        )
        try:
            with self.engine.connect() as conn:
                row = conn.execute(stmt).one_or_none()
        except SQLAlchemyError as exc:
            self._failed(where, exc)
            return False, None
        if row is None:
            return False, None
        locked_by, locked_time = str(row.locked_by), row.locked_time
        mine = locked_by.startswith(str(pid)) if check_base else locked_by == str(pid)
        if mine:
            return False, None
        log.debug("%s: locked by %s at %s", where, locked_by, locked_time)
        return True, locked_time


def schemas_of(cfg: PandaConfig) -> dict[str, str | None]:
    """PanDA's schema names as the ``[server]`` section renames them (None: not set)."""
    schemas: dict[str, str | None] = {}
    for name, key in SCHEMA_KEYS.items():
        try:
            value = cfg.server_value(key)
        except KeyError:  # an unset $VAR: the prefix is dropped
            value = None
        schemas[name] = value.strip() if value and value.strip() else None
    return schemas


def _check_minutes(time_limit: float) -> None:
    if not math.isfinite(time_limit):
        raise ValueError(f"time_limit must be a finite number of minutes, got: {time_limit!r}")

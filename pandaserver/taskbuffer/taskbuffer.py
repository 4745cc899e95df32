"""``TaskBuffer``: what a script's ``main(tbuf=...)`` gets.

It carries an SQLAlchemy engine (``tbuf.engine``), the context of the run
(``tbuf.context``: script name, run id, lease generation) and PanDA's process-lock
calls with their original arguments, meaning and return values:

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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from pandaserver.config import PandaConfig
from pandaserver.db.engine import describe_db_error, engine_from_url, make_engine
from pandaserver.db.servertime import db_now_expr, db_now_plus
from pandaserver.db.tables import panda_process_lock
from pandaserver.db.upsert import conditional_upsert
from pandaserver.taskbuffer.context import RunContext

log = logging.getLogger(__name__)


class TaskBuffer:
    def __init__(
        self,
        engine: Engine | None = None,
        context: RunContext | None = None,
        *,
        engine_factory: Callable[[], Engine] | None = None,
    ) -> None:
        """Use ``engine`` (owned by the caller), or build one lazily with ``engine_factory``."""
        if (engine is None) == (engine_factory is None):
            raise TypeError("give exactly one of engine and engine_factory")
        self.context = context if context is not None else RunContext()
        self._engine = engine
        self._factory = engine_factory
        self._engine_pid = os.getpid() if engine is not None else None

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

        return cls(context=context, engine_factory=factory)

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
        return self._engine

    def dispose(self) -> None:
        """Close the pooled connections of an engine this TaskBuffer created."""
        if self._factory is not None and self._engine is not None:
            if self._engine_pid == os.getpid():
                self._engine.dispose()
            else:
                self._engine.dispose(close=False)
            self._engine = None

    def _where(self, call: str, component: str, pid: str | int) -> str:
        ctx = self.context
        return (f"script={ctx.script} run={ctx.run_id} {call}"
                f" component={component} pid={pid}")

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


def _check_minutes(time_limit: float) -> None:
    if not math.isfinite(time_limit):
        raise ValueError(f"time_limit must be a finite number of minutes, got: {time_limit!r}")

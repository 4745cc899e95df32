"""Pruning ``daemon_run`` by age and by rows per script, in small batches.

Retention (``[daemon]``): ``history_retention_days`` (runs started longer ago are deleted)
and ``history_retention_rows`` (per script, only the newest N are kept; 0: no bound). A
run still ``running`` is never deleted. Rows of the last ``ROWS_FLOOR_DAYS`` days are
never deleted for the row bound: ``/metrics`` counts the runs of the last day or two from
the history (see web/metrics.py), and its counters must not go down.

A ``PrunePass`` is one pass over the history, made of steps; each ``step()`` deletes at most
``batch`` rows: one short read of their ids (oldest first, through an index) and one
``DELETE ... WHERE id IN (...)`` that re-checks the condition, each in its own short
transaction. So no statement holds a lock on ``daemon_run`` for long, and the caller (the
master's ``house`` lane) runs heartbeats between steps. The order: the age bound, oldest
first, then the row bound one script at a time (the scripts found by a skip scan, see
``skipscan.py``; per script, the N-th newest row found through the (script, started_at, id)
index, then everything older deleted, oldest first).

Times are the database's. Not thread-safe: one pass, one caller at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, or_, select

from pandaserver.db.base.servertime import db_now_plus
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.skipscan import scripts

RUNNING = "running"
BATCH_ROWS = 2000  # rows per DELETE statement
ROWS_FLOOR_DAYS = 2.0  # the row bound never deletes rows younger than this (for /metrics)


@dataclass(frozen=True)
class Retention:
    """``days``: the age bound (None: none); ``rows``: newest rows kept per script (0: none)."""

    days: float | None = None
    rows: int = 0

    def __post_init__(self) -> None:
        if self.days is not None and not self.days >= 0:
            raise ValueError(f"retention days must be a number >= 0, got: {self.days!r}")
        if self.rows < 0:
            raise ValueError(f"retention rows must be 0 (no bound) or more, got: {self.rows}")

    @property
    def bounded(self) -> bool:
        return self.days is not None or self.rows > 0


@dataclass(frozen=True)
class StepResult:
    """What one step did: rows deleted, by which bound, and whether the pass is over."""

    deleted: int
    done: bool
    by: str = ""  # "age", "rows" or "" (a step that only looked)


@dataclass
class PrunePass:
    """One pass over the history; call ``step()`` until it returns ``done``."""

    engine: Engine
    retention: Retention
    batch: int = BATCH_ROWS
    deleted: dict[str, int] = field(default_factory=lambda: {"age": 0, "rows": 0})
    _phase: str = "age"
    _scripts: list[str] | None = None
    _cutoff: tuple[datetime, int] | None = None  # the current script's N-th newest row

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got: {self.batch}")
        if self.retention.days is None:
            self._phase = "rows"

    @property
    def done(self) -> bool:
        return self._phase == "done"

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def step(self) -> StepResult:
        """Delete at most ``batch`` rows, or look at one script (at most two statements)."""
        while self._phase != "done":
            if self._phase == "age":
                return self._age_step()
            if self.retention.rows < 1:
                self._phase = "done"
                break
            result = self._rows_step()
            # a script with no more than N rows: the step only looked (one statement)
            return result if result is not None else StepResult(0, False, "")
        return StepResult(0, True)

    # ----- the age bound ------------------------------------------------------------------
    def _age_step(self) -> StepResult:
        assert self.retention.days is not None
        r = daemon_run
        where = [r.c.started_at < db_now_plus(-self.retention.days * 86400.0),
                 r.c.outcome != RUNNING]
        removed, more = self._delete_batch(where)
        self.deleted["age"] += removed
        if not more:
            self._phase = "rows"
        return StepResult(removed, self.retention.rows < 1 and not more, "age")

    # ----- the row bound, one script at a time -------------------------------------------
    def _rows_step(self) -> StepResult | None:
        """One batch of the current script; None when it moved on to the next script."""
        r = daemon_run
        with self.engine.connect() as conn:
            if self._scripts is None:
                cte = scripts()
                self._scripts = [row[0] for row in conn.execute(
                    select(cte.c.script).where(cte.c.script.is_not(None))).all()]
                self._scripts.reverse()  # popped from the end: alphabetical order
            if not self._scripts:
                self._phase = "done"
                return StepResult(0, True)
            name = self._scripts[-1]
            if self._cutoff is None:
                self._cutoff = self._nth_newest(conn, name)
                if self._cutoff is None:  # no more than N rows
                    self._scripts.pop()
                    return None
        at, ident = self._cutoff
        where = [r.c.script == name, r.c.outcome != RUNNING,
                 r.c.started_at < db_now_plus(-ROWS_FLOOR_DAYS * 86400.0),
                 _older_than(at, ident)]
        removed, more = self._delete_batch(where)
        self.deleted["rows"] += removed
        if not more:
            self._scripts.pop()
            self._cutoff = None
        return StepResult(removed, False, "rows")

    def _nth_newest(self, conn: Connection, name: str) -> tuple[datetime, int] | None:
        r = daemon_run
        stmt = (select(r.c.started_at, r.c.id).where(r.c.script == name)
                .order_by(r.c.started_at.desc(), r.c.id.desc())
                .offset(self.retention.rows - 1).limit(1))
        row = conn.execute(stmt).first()
        return None if row is None else (row[0], int(row[1]))

    # ----- one batch ----------------------------------------------------------------------
    def _delete_batch(self, where: Sequence[ColumnElement[bool]]) -> tuple[int, bool]:
        """Delete the oldest ``batch`` rows matching ``where``; (deleted, maybe more left)."""
        r = daemon_run
        with self.engine.connect() as conn:
            ids = [row[0] for row in conn.execute(
                select(r.c.id).where(*where).order_by(r.c.started_at, r.c.id).limit(self.batch)
            ).all()]
        if not ids:
            return 0, False
        with self.engine.begin() as conn:
            removed = max(0, conn.execute(delete(r).where(r.c.id.in_(ids), *where)).rowcount)
        return removed, len(ids) >= self.batch


def _older_than(at: datetime, ident: int) -> ColumnElement[bool]:
    r = daemon_run
    return or_(r.c.started_at < at, and_(r.c.started_at == at, r.c.id < ident))


def prune_all(engine: Engine, retention: Retention, batch: int = BATCH_ROWS,
              between: Callable[[StepResult], Any] | None = None) -> dict[str, int]:
    """A whole pass at once (tools and tests); ``between`` is called after every step.
    Returns the rows deleted by each bound."""
    work = PrunePass(engine, retention, batch)
    while True:
        result = work.step()
        if between is not None:
            between(result)
        if result.done:
            return work.deleted

"""Run history (``daemon_run``): one row per run, or per attempt skipped for a lease.

Times come from the database clock. A run is written either in two steps
(``record_start`` when it begins, ``record_end`` when it ends) or as one
``record(run)`` afterwards, with its duration measured on the master's monotonic
clock.

``PendingWrites`` keeps history writes that failed while the database was
unreachable. The master owns one; when a history write fails it adds the write
there, and on its next chance calls ``flush(history)``, which replays the writes in
their original order and stops at the first failure (the database is still down).
It is bounded: when full, the oldest entry is dropped and counted; ``flush`` reports
the count once, so the master can log how much history an outage cost. Each entry
remembers when (monotonic clock) it was queued, and the replay moves its times back
by the time it waited, so rows keep their real times on the database's clock. Not
thread-safe: one owner, the master's event loop. A write that failed ambiguously
(committed, but the connection broke before the answer) is replayed too: a
``RunRecord`` may then appear twice; a ``RunEnd`` is idempotent.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Engine,
    Float,
    bindparam,
    case,
    delete,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from pandaserver.db.clock import db_now_expr, db_now_plus
from pandaserver.db.tables import daemon_run

RUNNING = "running"
OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
LOST = "lost"  # the master died or was killed while it ran
SKIPPED = "skipped"  # another server holds the script's lease
FENCED = "fenced"  # killed before its lease could expire: the lease could not be renewed
KILLED = "killed"  # ended by an operator (panda-daemon kill)
END_OUTCOMES = (OK, FAILED, TIMEOUT, LOST, SKIPPED, FENCED, KILLED)
OUTCOMES = (RUNNING, *END_OUTCOMES)

MAX_ERROR_CHARS = 16000


@dataclass(frozen=True)
class RunRecord:
    """A whole run, written at once (or replayed later from ``PendingWrites``).

    ``duration``: seconds the run took (0 for skipped). ``ended_ago``: seconds before
    the write at which it ended; ``PendingWrites`` adds the time an entry waited. The
    row gets ``ended_at = db now - ended_ago`` and ``started_at = ended_at - duration``.
    ``due_before_start``: seconds the run was due before it started (its dispatch delay);
    when given (and ``due_at`` is not), ``due_at = started_at - due_before_start``, so the
    due time is on the database clock too.
    """

    script: str
    server: str
    pid: int | None
    outcome: str
    error: str | None = None
    generation: int | None = None
    due_at: datetime | None = None
    duration: float = 0.0
    ended_ago: float = 0.0
    due_before_start: float | None = None


@dataclass(frozen=True)
class RunEnd:
    """The end of a run already started with ``record_start`` (``ended_ago`` as above)."""

    run_id: int
    outcome: str
    error: str | None = None
    ended_ago: float = 0.0


@dataclass(frozen=True)
class RunRow:
    id: int
    script: str
    server: str
    pid: int | None
    generation: int | None
    due_at: datetime | None
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    error: str | None

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


def _check_outcome(outcome: str, allowed: tuple[str, ...]) -> None:
    if outcome not in allowed:
        raise ValueError(f"outcome must be one of {', '.join(allowed)}, got: {outcome!r}")


def _check_seconds(what: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got: {value!r}")


def _clip(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    cut = len(error) - MAX_ERROR_CHARS
    return f"[{cut} characters cut]\n" + error[-MAX_ERROR_CHARS:]


class HistoryStore:
    """Writes and reads ``daemon_run``; each method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_start(
        self,
        script: str,
        server: str,
        pid: int | None,
        generation: int | None = None,
        due_at: datetime | None = None,
    ) -> int:
        """Insert a ``running`` row started now; returns its id."""
        now = db_now_expr()
        stmt = insert(daemon_run).values(
            script=script, server=server, pid=pid, generation=generation, due_at=due_at,
            started_at=now, outcome=RUNNING,
        )
        with self.engine.begin() as conn:
            key = conn.execute(stmt).inserted_primary_key
        if key is None:  # pragma: no cover - every supported dialect reports it
            raise RuntimeError("the database did not report the new run's id")
        return int(key[0])

    def record_end(
        self, run_id: int, outcome: str, error: str | None = None, ended_ago: float = 0.0
    ) -> bool:
        """Close a run; False when no such run exists (it may have been pruned)."""
        _check_outcome(outcome, END_OUTCOMES)
        _check_seconds("ended_ago", ended_ago)
        stmt = (
            update(daemon_run)
            .where(daemon_run.c.id == run_id)
            .values(ended_at=db_now_plus(-ended_ago), outcome=outcome, error=_clip(error))
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def record(self, run: RunRecord) -> int:
        """Insert a whole run (see ``RunRecord``); returns its id."""
        with self.engine.begin() as conn:
            key = conn.execute(self._insert(run)).inserted_primary_key
        if key is None:  # pragma: no cover
            raise RuntimeError("the database did not report the new run's id")
        return int(key[0])

    def record_many(self, runs: list[RunRecord]) -> None:
        """Insert several whole runs in one statement (executemany) and one commit."""
        if not runs:
            return
        params = []
        for run in runs:
            _check_outcome(run.outcome, END_OUTCOMES)
            _check_seconds("duration", run.duration)
            _check_seconds("ended_ago", run.ended_ago)
            started_ago = run.ended_ago + run.duration
            due_ago = None if run.due_before_start is None else started_ago + run.due_before_start
            params.append({
                "p_script": run.script, "p_server": run.server, "p_pid": run.pid,
                "p_generation": run.generation, "p_outcome": run.outcome,
                "p_error": _clip(run.error), "p_started_ago": -started_ago,
                "p_ended_ago": -run.ended_ago,
                "p_due_ago": -due_ago if due_ago is not None else 0.0,
                "p_has_due": due_ago is not None,
            })
        stmt = insert(daemon_run).values(
            script=bindparam("p_script"), server=bindparam("p_server"),
            pid=bindparam("p_pid"), generation=bindparam("p_generation"),
            due_at=case((bindparam("p_has_due", type_=Boolean),
                         db_now_plus(bindparam("p_due_ago", type_=Float))), else_=null()),
            started_at=db_now_plus(bindparam("p_started_ago", type_=Float)),
            ended_at=db_now_plus(bindparam("p_ended_ago", type_=Float)),
            outcome=bindparam("p_outcome"), error=bindparam("p_error"),
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, params)

    def _insert(self, run: RunRecord) -> Any:
        _check_outcome(run.outcome, END_OUTCOMES)
        _check_seconds("duration", run.duration)
        _check_seconds("ended_ago", run.ended_ago)
        due_at: Any = run.due_at
        if due_at is None and run.due_before_start is not None:
            due_at = db_now_plus(-(run.ended_ago + run.duration + run.due_before_start))
        stmt = insert(daemon_run).values(
            script=run.script, server=run.server, pid=run.pid, generation=run.generation,
            due_at=due_at,
            started_at=db_now_plus(-(run.ended_ago + run.duration)),
            ended_at=db_now_plus(-run.ended_ago),
            outcome=run.outcome, error=_clip(run.error),
        )
        return stmt

    def write(self, item: RunRecord | RunEnd) -> None:
        """Apply one pending write (what ``PendingWrites.flush`` calls)."""
        if isinstance(item, RunRecord):
            self.record(item)
        else:
            self.record_end(item.run_id, item.outcome, item.error, item.ended_ago)

    def mark_lost(self, server: str) -> int:
        """Close every run ``server`` left ``running`` as ``lost``; returns how many.

        For a master starting up: runs its previous incarnation never finished.
        """
        stmt = (
            update(daemon_run)
            .where(daemon_run.c.server == server, daemon_run.c.outcome == RUNNING)
            .values(outcome=LOST, ended_at=db_now_expr(),
                    error="the master stopped before the run ended")
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def prune(self, older_than_days: float) -> int:
        """Delete runs started more than ``older_than_days`` ago; returns how many."""
        _check_seconds("older_than_days", older_than_days)
        cutoff = db_now_plus(-older_than_days * 86400.0)
        with self.engine.begin() as conn:
            return conn.execute(delete(daemon_run).where(daemon_run.c.started_at < cutoff)).rowcount

    def query(self, name: str | None = None, limit: int = 50) -> list[RunRow]:
        """The newest runs first, of one script or of all."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got: {limit}")
        stmt = select(daemon_run).order_by(daemon_run.c.started_at.desc(), daemon_run.c.id.desc())
        if name is not None:
            stmt = stmt.where(daemon_run.c.script == name)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.limit(limit)).all()
        return [RunRow(**row._mapping) for row in rows]


PendingItem = RunRecord | RunEnd


@dataclass(frozen=True)
class FlushResult:
    """``written``: replayed now; ``remaining``: still queued; ``dropped``: entries lost
    to the bound since the last report; ``error``: the exception that stopped the
    replay (None when everything was written)."""

    written: int
    remaining: int
    dropped: int
    error: SQLAlchemyError | None = None


class PendingWrites:
    def __init__(self, max_items: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got: {max_items}")
        self.max_items = max_items
        self._clock = clock
        self._items: deque[tuple[float, PendingItem]] = deque()
        self._dropped_unreported = 0
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, item: PendingItem) -> None:
        """Queue a write; drops (and counts) the oldest when full."""
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self._dropped_unreported += 1
            self.dropped_total += 1
        self._items.append((self._clock(), item))

    def items(self) -> list[PendingItem]:
        """The queued writes, oldest first (for moving them to another queue)."""
        return [item for _, item in self._items]

    def take_dropped(self) -> int:
        """How many entries were dropped since the last report (and reset that count)."""
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        return dropped

    def flush(self, history: HistoryStore, chunk: int = 500) -> FlushResult:
        """Replay queued writes oldest first, whole runs ``chunk`` at a time in one
        transaction each; stop at the first database error."""
        written = 0
        error: SQLAlchemyError | None = None
        while self._items:
            now = self._clock()
            batch: list[RunRecord] = []
            for queued_at, item in itertools.islice(self._items, chunk):
                if not isinstance(item, RunRecord):
                    break
                batch.append(replace(item, ended_ago=item.ended_ago + max(0.0, now - queued_at)))
            try:
                if batch:
                    history.record_many(batch)
                else:
                    queued_at, item = self._items[0]
                    history.write(replace(item, ended_ago=item.ended_ago
                                          + max(0.0, now - queued_at)))
            except SQLAlchemyError as exc:
                error = exc
                break
            done = len(batch) or 1
            for _ in range(done):
                self._items.popleft()
            written += done
        return FlushResult(written, len(self._items), self.take_dropped(), error)

"""Writes run history on a thread of its own, so the master's loop never waits for a commit.

The master submits jobs: rows (run starts and ends, each stamped with the monotonic time it
was made) or a call (one statement, such as closing the runs of dead masters). The thread
takes every row job queued when it is free and writes them as one batch, one transaction
(group commit: a busy master gets bigger batches, an idle one a commit per run), moving
each row's times back by how long it waited. Results go back on a queue that the master
drains in its loop, woken by each (``wake``: the master's wait watches the pipe it writes
to); the master alone decides what an error means.

A batch refused by the database for its data (``bad_rows``: an integrity, data or
programming error) is retried row by row, so one bad row never costs the others; the rows
refused again are reported. Any other failure (an outage, or an unexpected error) keeps
the rows for a later attempt. The writes are idempotent (keyed rows), so a batch that may
have been written is simply written again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pandaserver.daemons.fleet.lanes import name_thread
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runrecords import PendingItem

Stamped = tuple[float, PendingItem]  # (monotonic time the write was made, the write)
MAX_BATCH = 2000  # rows per transaction


def is_outage(exc: BaseException) -> bool:
    """True for errors that say the database cannot be reached or used right now (worth
    trying again later), False for errors that say this write is wrong."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


def bad_rows(exc: BaseException) -> bool:
    """True when the database refused the statement for its data: retrying it unchanged
    would fail again (``ValueError``: a row this code refuses to write)."""
    if is_outage(exc):
        return False
    return isinstance(exc, IntegrityError | DataError | ProgrammingError | ValueError | TypeError)


@dataclass(frozen=True)
class Job:
    id: int
    rows: list[Stamped] = field(default_factory=list)
    call: Callable[[HistoryStore], int] | None = None
    what: str = ""


@dataclass(frozen=True)
class Written:
    """What became of some jobs: ``written`` rows are in the database; ``failed`` rows
    were not written because of ``error`` (an outage, or an unexpected error: worth another
    try); ``refused`` rows were refused one by one (each with its error). A call reports
    its ``what`` and ``value`` (or ``error``)."""

    jobs: tuple[int, ...]
    written: list[Stamped] = field(default_factory=list)
    failed: list[Stamped] = field(default_factory=list)
    refused: list[tuple[Stamped, BaseException]] = field(default_factory=list)
    error: BaseException | None = None
    what: str = ""
    value: int = 0


_STOP = Job(-1)


class HistoryWriter:
    def __init__(self, history: HistoryStore, clock: Callable[[], float],
                 wake: Callable[[], None] | None = None) -> None:
        """``wake``: called on the thread after each result is queued, so the master's wait
        (which watches what it writes to) wakes for it rather than look again and again."""
        self._history = history
        self._clock = clock
        self._wake = wake
        self._todo: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Written] = queue.SimpleQueue()
        self._next_id = 0
        self.inflight: dict[int, Job] = {}  # submitted, result not collected yet
        self._thread = threading.Thread(target=self._work, name="history-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[Stamped] | None = None,
               call: Callable[[HistoryStore], int] | None = None, what: str = "") -> int:
        self._next_id += 1
        job = Job(self._next_id, rows or [], call, what)
        self.inflight[job.id] = job
        self._todo.put(job)
        return job.id

    @property
    def busy(self) -> bool:
        """Jobs submitted whose result has not been collected yet."""
        return bool(self.inflight)

    def results(self) -> list[Written]:
        """The results that arrived since the last call (never blocks)."""
        found = []
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                break
            for job_id in result.jobs:
                self.inflight.pop(job_id, None)
            found.append(result)
        return found

    def close(self, timeout: float) -> list[Written]:
        """Finish what was submitted (waiting up to ``timeout``), stop, and return the
        results; jobs still unanswered stay in ``inflight``."""
        self._todo.put(_STOP)
        self._thread.join(max(0.0, timeout))
        return self.results()

    # ----- the thread ---------------------------------------------------------------------
    def _answer(self, result: Written) -> None:
        self._done.put(result)
        if self._wake is not None:
            self._wake()

    def _work(self) -> None:
        name_thread("history-writer")
        carried: Job | None = None
        while True:
            job = carried if carried is not None else self._todo.get()
            carried = None
            if job is _STOP:
                return
            if job.call is not None:
                self._call(job)
                continue
            jobs = [job]
            count = len(job.rows)
            while count < MAX_BATCH:
                try:
                    more = self._todo.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP or more.call is not None:
                    carried = more  # after this batch, in order
                    break
                jobs.append(more)
                count += len(more.rows)
            self._write(tuple(j.id for j in jobs), [row for j in jobs for row in j.rows])

    def _aged(self, rows: list[Stamped]) -> list[PendingItem]:
        now = self._clock()
        return [item.aged(now - made) for made, item in rows]

    def _write(self, ids: tuple[int, ...], rows: list[Stamped]) -> None:
        try:
            closed = self._history.write_many(self._aged(rows))
        except BaseException as exc:  # reported to the master, which decides
            if bad_rows(exc):
                self._one_by_one(ids, rows)
            else:
                self._answer(Written(ids, failed=rows, error=exc))
            return
        self._answer(Written(ids, written=rows, value=closed))

    def _one_by_one(self, ids: tuple[int, ...], rows: list[Stamped]) -> None:
        written: list[Stamped] = []
        refused: list[tuple[Stamped, BaseException]] = []
        closed = 0
        for index, row in enumerate(rows):
            try:
                closed += self._history.write_many(self._aged([row]))
            except BaseException as exc:
                if not bad_rows(exc):
                    self._answer(Written(ids, written, rows[index:], refused, exc,
                                           value=closed))
                    return
                refused.append((row, exc))
            else:
                written.append(row)
        self._answer(Written(ids, written, [], refused, value=closed))

    def _call(self, job: Job) -> None:
        assert job.call is not None
        try:
            value = job.call(self._history)
        except BaseException as exc:
            self._answer(Written((job.id,), error=exc, what=job.what))
        else:
            self._answer(Written((job.id,), what=job.what, value=value))

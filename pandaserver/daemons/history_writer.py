"""Writes run history on a thread of its own, so the master's loop never waits for a commit.

The master submits batches; the thread writes each in one transaction and reports the
result on a queue that the master drains in its loop (the master alone decides what an
error means: an outage, or rows to drop). One thread, one batch at a time, in order.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from pandaserver.db.history import HistoryStore, RunRecord


@dataclass(frozen=True)
class Written:
    rows: list[RunRecord]
    error: BaseException | None  # None: written


class HistoryWriter:
    def __init__(self, history: HistoryStore) -> None:
        self._history = history
        self._todo: queue.SimpleQueue[list[RunRecord] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Written] = queue.SimpleQueue()
        self._busy = 0
        self._thread = threading.Thread(target=self._work, name="history-writer", daemon=True)
        self._thread.start()

    def submit(self, rows: list[RunRecord]) -> None:
        self._busy += 1
        self._todo.put(rows)

    @property
    def busy(self) -> bool:
        """Batches submitted whose result has not been collected yet."""
        return self._busy > 0

    def results(self) -> list[Written]:
        """The results that arrived since the last call (never blocks)."""
        found = []
        while True:
            try:
                found.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._busy -= len(found)
        return found

    def close(self, timeout: float) -> list[Written]:
        """Finish what was submitted (waiting up to ``timeout``), stop, and return results."""
        self._todo.put(None)
        self._thread.join(timeout)
        return self.results()

    def _work(self) -> None:
        while True:
            rows = self._todo.get()
            if rows is None:
                return
            try:
                self._history.record_many(rows)
            except BaseException as exc:  # reported to the master, which decides
                self._done.put(Written(rows, exc))
            else:
                self._done.put(Written(rows, None))

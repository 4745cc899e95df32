"""When the master prunes its history, one small step at a time (the statements: db/stores/pruning.py).

Every ``PRUNE_INTERVAL`` a pass begins. The master runs it on its ``house`` lane one step per
call (at most ``pruning.BATCH_ROWS`` rows deleted), and waits ``PRUNE_PAUSE`` between
steps, so heartbeats and history replays queued on that lane go in between and the database
gets air. A pass ends when nothing is left to prune or after a database error (the next
pass begins ``PRUNE_INTERVAL`` after it began). After ``PASS_BUDGET`` seconds a pass is
suspended and goes on where it stopped ``PRUNE_INTERVAL`` later. So a large backlog (a new
``history_retention_rows``, a retention shortened) or thousands of scripts to look at go
over a few passes, never in one long statement.

Owned by the loop: ``due``/``op``/``finished`` are called on the loop thread; the op runs
on the lane thread, one at a time (the next is submitted only after the last one came back).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from pandaserver.config.daemon import DaemonSettings
from pandaserver.db.stores import pruning

log = logging.getLogger("panda.master")

PRUNE_INTERVAL = 3600.0
PRUNE_PAUSE = 0.2  # seconds between two steps of a pass
PASS_BUDGET = 300.0  # seconds a pass may last; the rest waits for the next pass


@dataclass
class PruneSchedule:
    engine: Engine
    settings: Callable[[], DaemonSettings]
    next_at: float = 0.0  # monotonic: when the next step (or pass) is due
    pause: float = PRUNE_PAUSE
    interval: float = PRUNE_INTERVAL
    budget: float = PASS_BUDGET
    batch: int = pruning.BATCH_ROWS

    def __post_init__(self) -> None:
        self._pass: pruning.PrunePass | None = None
        self._began: float | None = None  # None: no pass, or one suspended
        self._lock = threading.Lock()  # an abandoned step still running, should it be

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def retention(self) -> pruning.Retention:
        s = self.settings()
        return pruning.Retention(days=s.history_retention_days, rows=s.history_retention_rows)

    def op(self, now: float) -> Callable[[], pruning.StepResult]:
        """The next step to run on the lane (a new pass begins when none is under way)."""
        if self._pass is None:
            self._pass = pruning.PrunePass(self.engine, self.retention(), self.batch)
            self._began = now
        elif self._began is None:  # a pass that ran out of time: it goes on from there
            self._began = now
        work = self._pass
        self.next_at = now + self.interval  # until it comes back

        def step() -> pruning.StepResult:
            if not self._lock.acquire(blocking=False):
                return pruning.StepResult(0, False)
            try:
                return work.step()
            finally:
                self._lock.release()

        return step

    def finished(self, result: pruning.StepResult | None, error: BaseException | None,
                 now: float) -> None:
        """A step came back: schedule the next one, or end (or suspend) the pass."""
        work, began = self._pass, self._began
        if work is None or began is None:
            return
        more = error is None and result is not None and not result.done
        if more and now - began < self.budget:
            self.next_at = now + self.pause
            return
        self.next_at = max(began + self.interval, now + self.pause)
        if more:  # out of time: the rest an interval later, where this one stopped
            self._began = None
        else:
            self._pass = None
        if work.total:
            r = work.retention
            bounds = " and ".join(b for b in (
                f"older than {r.days:g} days" if r.days is not None else "",
                f"beyond the newest {r.rows} per script" if r.rows else "") if b)
            log.info("pruned %d history row(s) %s (%d by age, %d by rows) in %.1f s%s",
                     work.total, bounds, work.deleted["age"], work.deleted["rows"],
                     now - began, "; the rest at the next pass" if more else "")
            work.deleted = {"age": 0, "rows": 0}

"""Runs as the master sees them, and where finished runs are recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from pandaserver.daemons.base import protocol

log = logging.getLogger("panda.master")


@dataclass
class Run:
    """One dispatch of one script. Monotonic times drive decisions; wall times are for humans."""

    id: int
    script: str
    worker: int
    pid: int
    due: float
    dispatched: float
    timeout_at: float
    generation: int | None = None
    started: float | None = None  # monotonic time main() was called (reported by the worker)
    ended: float | None = None
    timed_out: bool = False
    fenced: bool = False  # killed because its lease could not be renewed
    killed_by: str | None = None  # an operator's kill: who asked, and why
    crash: str | None = None  # why this run counts as a crash (worker died, import failed)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.script} run {self.id}"


@dataclass(frozen=True)
class RunRecord:
    """A finished run, as history stores it."""

    script: str
    server: str
    pid: int
    run_id: int
    generation: int | None
    outcome: str
    error: str | None
    duration: float
    dispatch_delay: float  # main() called minus due time
    queued: float  # handed to a worker minus due time (waiting for a free worker)
    ended: float = 0.0  # monotonic time the run ended (history dates the run from it)


class Recorder(Protocol):
    def start(self, run: Run) -> None:
        """A run was just dispatched (history: its ``running`` row)."""

    def record(self, record: RunRecord) -> None: ...


class LogRecorder:
    """Records each finished run as one log line (the history table comes with the database)."""

    def start(self, run: Run) -> None:
        pass  # the log line comes when it ends

    def record(self, record: RunRecord) -> None:
        level = logging.INFO if record.outcome in (protocol.OK, protocol.SKIPPED) else logging.ERROR
        error = f": {record.error}" if record.error else ""
        log.log(
            level,
            "%s run %d outcome=%s duration=%.3fs delay=%.4fs queued=%.4fs pid=%d%s",
            record.script,
            record.run_id,
            record.outcome,
            record.duration,
            record.dispatch_delay,
            record.queued,
            record.pid,
            error,
        )

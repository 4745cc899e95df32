"""What the run history holds, as Python values: the outcomes, a run as the master writes
it (``RunStart`` when dispatched, ``RunRecord`` or ``RunEnd`` when it ends: the
``PendingItem`` a history batch or the spool file holds) and a row as read (``RunRow``).

A run's error text is redacted as soon as a record is made; the statements that write and
read them are in ``history.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from pandaserver.config.secrets import redact

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
    # the key of a run the master dispatched (None: an unkeyed row, inserted as is)
    master_id: str | None = None
    master_pid: int | None = None
    run_id: int | None = None

    def __post_init__(self) -> None:
        _redact_error(self)

    def aged(self, seconds: float) -> RunRecord:
        """The same run, written ``seconds`` later."""
        return replace(self, ended_ago=self.ended_ago + max(0.0, seconds))


@dataclass(frozen=True)
class RunStart:
    """A run just dispatched: a ``running`` row, keyed by ``(master_id, run_id)``.

    ``started_ago``: seconds before the write at which it was dispatched;
    ``due_before_start``: how long it had been due then (``due_at`` on the database clock).
    """

    script: str
    server: str
    master_id: str
    master_pid: int
    run_id: int
    pid: int | None = None
    generation: int | None = None
    started_ago: float = 0.0
    due_before_start: float | None = None

    def aged(self, seconds: float) -> RunStart:
        return replace(self, started_ago=self.started_ago + max(0.0, seconds))


@dataclass(frozen=True)
class RunEnd:
    """The end of a run already started with ``record_start`` (``ended_ago`` as above)."""

    run_id: int
    outcome: str
    error: str | None = None
    ended_ago: float = 0.0

    def __post_init__(self) -> None:
        _redact_error(self)

    def aged(self, seconds: float) -> RunEnd:
        return replace(self, ended_ago=self.ended_ago + max(0.0, seconds))


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
    master_id: str | None = None
    master_pid: int | None = None
    run_id: int | None = None
    # 1 while the ended run waits to be counted (runcounts.py); not shown anywhere
    tally: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:  # a row written raw by an older version
        _redact_error(self)

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


PendingItem = RunStart | RunRecord | RunEnd


def clip_error(error: str | None) -> str | None:
    """The error as stored: redacted (again: ``record_end`` takes a bare text), then cut to
    its last ``MAX_ERROR_CHARS`` characters (after, so no cut leaves half a secret)."""
    if error:
        error = redact(error)
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    cut = len(error) - MAX_ERROR_CHARS
    return f"[{cut} characters cut]\n" + error[-MAX_ERROR_CHARS:]


def _redact_error(item: RunRecord | RunEnd | RunRow) -> None:
    """A run's error text is a script's exception: it may quote a secret of the
    configuration. It is redacted when a record is made (so neither the spool file nor the
    database ever holds it) and when a row is read (rows written before this rule)."""
    if item.error:
        object.__setattr__(item, "error", redact(item.error))

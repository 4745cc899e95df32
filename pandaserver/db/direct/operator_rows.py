"""The operator commands' verbs and rows, without SQLAlchemy.

Shared by both executors of the operator's statements: ``operator_commands.ControlStore``
(SQLAlchemy, every backend) and ``operator_sqlite.SqliteControl`` (the standard library's
``sqlite3`` on a SQLite file, so that ``pause`` and ``fleet`` answer without importing
SQLAlchemy). Also the liveness rule the pages, ``fleet`` and the commands share.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PAUSE = "pause"
RESUME = "resume"
RUN_NOW = "run-now"
KILL = "kill"
DRAIN = "drain"
UNDRAIN = "undrain"
RESTART_WORKERS = "restart-workers"
VERBS = (PAUSE, RESUME, RUN_NOW, KILL, DRAIN, UNDRAIN, RESTART_WORKERS)
EVERY = "*"  # daemon_hold.server of a pause that holds on every server
CHANNEL = "panda_daemon_command"  # PostgreSQL: notified when a command is recorded
# a server is alive while its last heartbeat is at most this many heartbeat intervals old
ALIVE_BEATS = 3.0


@dataclass(frozen=True)
class Command:
    id: int
    verb: str
    target: str
    server: str | None
    reason: str | None
    requested_by: str
    requested_at: datetime
    claimed_by: str | None = None


@dataclass(frozen=True)
class Hold:
    kind: str  # "pause" or "drain"
    name: str  # the script (pause) or the server (drain)
    server: str  # EVERY or one server
    command_id: int
    requested_by: str
    reason: str | None
    since: datetime


@dataclass(frozen=True)
class Ack:
    command_id: int
    server: str
    pid: int
    acted_at: datetime
    note: str | None


def hold_scope(verb: str, target: str, server: str | None) -> tuple[str, str] | None:
    """The (kind, server) of the hold a command changes (None: it changes none): a pause
    or resume the script's pause on ``server`` (every server: ``EVERY``), a drain or
    undrain the drain of server ``target``."""
    if verb in (PAUSE, RESUME):
        return PAUSE, server or EVERY
    if verb in (DRAIN, UNDRAIN):
        return DRAIN, target
    return None

"""The rows the fleet views read, without SQLAlchemy: a server's heartbeat (``ServerRow``,
``heartbeat.HeartbeatStore``'s) and a lease (``LeaseRow``, ``leases.LeaseStore``'s), so
that ``panda-daemon fleet`` on a SQLite file reads them through ``sqlite3``
(pandaserver/web/fleetsqlite.py) without importing SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ServerRow:
    server: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    config_hash: str
    db_now: datetime
    server_time: datetime | None = None
    state: str | None = None  # JSON the master reports of itself (draining, crash-looping)

    @property
    def age(self) -> float:
        """Seconds since the last heartbeat, by the database clock."""
        return (self.db_now - self.last_seen).total_seconds()

    @property
    def clock_offset(self) -> float | None:
        """The server's wall clock minus the database clock at its last beat (seconds;
        positive: the server is ahead), None when the master did not send its time."""
        if self.server_time is None:
            return None
        return (self.server_time - self.last_seen).total_seconds()


@dataclass(frozen=True)
class LeaseRow:
    """One lease as stored, with the database's time of reading (``db_now``)."""

    name: str
    generation: int
    owner_server: str | None
    owner_pid: int | None
    acquired_at: datetime | None
    expires_at: datetime | None
    next_due: datetime
    period: float
    updated_at: datetime
    db_now: datetime
    # refused grant attempts, ever; the server of the latest and when (database clock)
    contended: int = 0
    contended_by: str | None = None
    contended_at: datetime | None = None
    firing: datetime | None = None  # a cron script's: the latest firing served
    # held, but its run has ended (its history row says so): the release has not landed yet
    # (deferred until the holder's next grant: daemons/fleet/releases.py). Not read by
    # ``list_leases``: ``with_finished`` fills it
    finished: bool = False

    @property
    def contended_ago(self) -> float | None:
        """Seconds since the latest refused attempt (None: never refused)."""
        if self.contended_at is None:
            return None
        return (self.db_now - self.contended_at).total_seconds()

    @property
    def held(self) -> bool:
        """True while a holder may still be running under it."""
        return self.expires_at is not None and self.expires_at > self.db_now

    @property
    def expires_in(self) -> float | None:
        """Seconds until the lease expires (negative: expired), None when released."""
        if self.expires_at is None:
            return None
        return (self.expires_at - self.db_now).total_seconds()

    @property
    def due_in(self) -> float:
        """Seconds until the script is next due fleet-wide (negative: overdue)."""
        return (self.next_due - self.db_now).total_seconds()


def lease_row(m: Mapping[Any, Any]) -> LeaseRow:
    """A ``LeaseRow`` from a row of ``leases._select_rows()`` (its columns by name)."""
    return LeaseRow(
        name=m["name"],
        generation=int(m["generation"]),
        owner_server=m["owner_server"],
        owner_pid=m["owner_pid"],
        acquired_at=m["acquired_at"],
        expires_at=m["expires_at"],
        next_due=m["next_due"],
        period=float(m["period"]),
        updated_at=m["updated_at"],
        db_now=m["db_now"],
        contended=int(m["contended"] or 0),
        contended_by=m["contended_by"],
        contended_at=m["contended_at"],
        firing=m["firing"],
    )

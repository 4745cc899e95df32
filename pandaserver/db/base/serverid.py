"""Which database server a connection reached: noticing a failover to a promoted standby.

A master connects through a URL that may list a primary and its standbys
(``db/base/multihost.py``); libpq keeps the first host that accepts writes, so after a failover
the master's next connection silently reaches another server. With asynchronous
replication that server may lack the last commits of the old primary: a lease grant, a
renewal, history rows. The master must know, so ``IdentityWatch`` reads the server's
identity on every new connection of the engine (the SQLAlchemy ``connect`` event: every
lane's and the history writer's reconnects) and counts the changes of *history*:

- ``system_identifier`` (``pg_control_system()``): set by ``initdb`` and copied by
  ``pg_basebackup``, so a primary and its standbys share it; another value means another
  database cluster altogether.
- the timeline: a promoted standby starts a new one, a restarted server keeps its own. It
  is read from the name of the WAL file being written (``pg_walfile_name(pg_current_wal_lsn())``,
  whose first eight hex digits are the timeline in use), not from
  ``pg_control_checkpoint()``, which shows the new timeline only after the first
  checkpoint following the promotion, seconds later.
- ``pg_postmaster_start_time()``, only to tell a restart of the same server (same system
  identifier and timeline: nothing committed was lost, nothing to do, as before) in the log.

A change of system identifier or timeline bumps ``epoch``; the master then holds its lease
statements until every lease granted on the old server must have fenced itself
(``daemons/fleet/failover.py``). Reading it costs one statement per new connection, none
per statement. Only PostgreSQL has it: on MySQL/MariaDB and SQLite nothing is attached
(docs/database.md, "Failover of the database").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("panda.master")

IDENTITY_SQL = (
    "SELECT s.system_identifier,"
    " CASE WHEN pg_is_in_recovery() THEN NULL"
    " ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END,"
    " pg_postmaster_start_time()"
    " FROM pg_control_system() s"
)


class ServerChanged(Exception):
    """A lease statement was about to run on a database server other than the one the
    master's lease state belongs to (a failover the loop has not acted on yet)."""


@dataclass(frozen=True)
class ServerIdentity:
    system_id: int
    timeline: int | None  # None: a standby (in recovery)
    started: datetime | None

    def same_history(self, other: ServerIdentity) -> bool:
        """The same cluster on the same timeline: every commit seen before is still there."""
        return self.system_id == other.system_id and self.timeline == other.timeline

    def __str__(self) -> str:
        return f"system {self.system_id} timeline {self.timeline}"


def read_identity(dbapi_connection: Any) -> ServerIdentity:
    """The identity of the server a fresh psycopg2 connection reached (one statement; the
    transaction it opened, if any, is ended)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(IDENTITY_SQL)
        system_id, timeline, started = cursor.fetchone()
    finally:
        cursor.close()
        if not getattr(dbapi_connection, "autocommit", True):
            dbapi_connection.rollback()
    return ServerIdentity(int(system_id), int(timeline, 16) if timeline else None, started)


class IdentityWatch:
    """Reads the server's identity on every new connection of an engine; thread-safe (the
    lanes and the history writer connect on their own threads)."""

    def __init__(self, engine: Engine | None = None) -> None:
        self._lock = threading.Lock()
        self.current: ServerIdentity | None = None
        self.epoch = 0  # changes of history seen (failovers); read from any thread
        self.restarts = 0  # the same server seen with a new start time
        self.changes: list[tuple[ServerIdentity, ServerIdentity]] = []
        self.unreadable = False
        if engine is not None:
            event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        try:
            identity = read_identity(dbapi_connection)
        except Exception as exc:  # not fatal: the connection is used as before
            if not self.unreadable:
                log.warning("database: cannot read the server's identity (%s: %s); a failover"
                            " to a standby would not be noticed", type(exc).__name__, exc)
            self.unreadable = True
            try:
                dbapi_connection.rollback()
            except Exception:
                log.debug("rollback after the identity read failed", exc_info=True)
            return
        self.seen(identity)

    def seen(self, identity: ServerIdentity) -> None:
        """A connection reached ``identity``: bump ``epoch`` when its history differs."""
        with self._lock:
            before, self.current = self.current, identity
            if before is None or before == identity:
                return
            if before.same_history(identity):
                self.restarts += 1
                log.info("database: the same server (%s) restarted at %s", identity,
                         identity.started)
                return
            self.epoch += 1
            self.changes.append((before, identity))
        log.error("database: now %s, until now %s: the database failed over to another"
                  " server", identity, before)

    def check(self, epoch: int) -> None:
        """Raise ``ServerChanged`` unless the history is still the one of ``epoch``."""
        if self.epoch != epoch:
            raise ServerChanged(f"the database is another server since ({self.current});"
                                " lease statements wait until the old leases have fenced")

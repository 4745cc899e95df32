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
per statement.

A master that *starts* after a failover (or reaches the database for the first time after
one) has no earlier identity to compare with. So the first connection to each history
(system identifier and timeline) also records it in ``daemon_db_timeline`` on that very
server (``INSERT ... ON CONFLICT DO NOTHING``, the database's clock) and reads back when a
master of the fleet first saw it: the promotion came before that, whatever the standby
missed (the row is written on the new primary, never replicated to it). With the time of
the last checkpoint when it was taken on this timeline (after the promotion, too), that
gives ``elapsed``: at least this many seconds have passed since the server's history began
(``history_elapsed``, pure). The gate waits out the rest of ``lease_ttl + SAFETY``. A
server on timeline 1 whose table names no other history was never promoted: no wait. Two
statements per new history per master, none per lease statement.

MySQL/MariaDB have no timeline: a server is ``@@server_id`` (unique within a replication
topology, which refuses two servers with one id), ``@@hostname`` and ``@@port``, with one
history of its own ("timeline" 1; none while ``@@read_only``). Another server is a
failover; a server on which no master arrived before, in a table that names other servers,
waits a window from the first arrival. No restart is told apart (no start time read). On
SQLite nothing is attached (docs/database.md, "Failover of the database").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
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


CHECKPOINT_RESOLUTION = timedelta(seconds=1)

# MySQL/MariaDB: no timeline; a server is its server_id (unique in a replication topology),
# host name and port; one "timeline" (1) per server, none for a read-only replica
MYSQL_IDENTITY_SQL = ("SELECT CONCAT(@@server_id, '@', @@hostname, ':', @@port),"
                      " IF(@@read_only, NULL, '00000001'), NULL")

# the first master to reach a history records it; every master reads when that was
RECORD_SQL = ("INSERT INTO daemon_db_timeline (system_id, timeline, first_seen, seen_by)"
              " VALUES (%s, %s, now(), %s) ON CONFLICT (system_id, timeline) DO NOTHING")
MYSQL_RECORD_SQL = ("INSERT IGNORE INTO daemon_db_timeline (system_id, timeline, first_seen,"
                    " seen_by) VALUES (%s, %s, UTC_TIMESTAMP(6), %s)")
_OTHERS = ("(SELECT count(*) FROM daemon_db_timeline o"
           " WHERE o.system_id <> t.system_id OR o.timeline <> t.timeline)")
FIRST_SEEN_SQL = (
    f"SELECT t.first_seen, now(), {_OTHERS}, c.timeline_id, c.checkpoint_time"
    " FROM daemon_db_timeline t, pg_control_checkpoint() c"
    " WHERE t.system_id = %s AND t.timeline = %s"
)
MYSQL_FIRST_SEEN_SQL = (
    f"SELECT t.first_seen, UTC_TIMESTAMP(6), {_OTHERS}, NULL, NULL"
    " FROM daemon_db_timeline t WHERE t.system_id = %s AND t.timeline = %s"
)
SQL = {"postgresql": (IDENTITY_SQL, RECORD_SQL, FIRST_SEEN_SQL),
       "mysql": (MYSQL_IDENTITY_SQL, MYSQL_RECORD_SQL, MYSQL_FIRST_SEEN_SQL)}


class ServerChanged(Exception):
    """A lease statement was about to run on a database server other than the one the
    master's lease state belongs to (a failover the loop has not acted on yet)."""


@dataclass(frozen=True)
class ServerIdentity:
    system_id: int | str  # MySQL/MariaDB: SERVER_ID@HOST:PORT
    timeline: int | None  # None: a standby (in recovery; MySQL: read-only)
    started: datetime | None

    def same_history(self, other: ServerIdentity) -> bool:
        """The same cluster on the same timeline: every commit seen before is still there."""
        return self.system_id == other.system_id and self.timeline == other.timeline

    def __str__(self) -> str:
        return f"system {self.system_id} timeline {self.timeline}"


@dataclass(frozen=True)
class HistoryAge:
    """What a master knows of when the server's current history began, read at ``measured``
    (its monotonic clock): at least ``elapsed`` seconds before (``math.inf``: never promoted)."""

    identity: ServerIdentity
    elapsed: float
    measured: float


def history_elapsed(timeline: int, first_seen: datetime, now: datetime, others: int,
                    checkpoint_timeline: int | None, checkpoint_time: datetime | None) -> float:
    """Seconds that have passed at least since the server began its current history, from
    the database's own clock: the promotion that started ``timeline`` happened before the
    first master recorded it (``first_seen``) and before any checkpoint on that timeline.
    Timeline 1 with no other history recorded: the server was never promoted (``inf``)."""
    if timeline == 1 and others == 0:
        return math.inf
    latest = first_seen
    if checkpoint_timeline == timeline and checkpoint_time is not None:
        # pg_control keeps the checkpoint's start in whole seconds, rounded down
        latest = min(latest, checkpoint_time + CHECKPOINT_RESOLUTION)
    return max(0.0, (now - latest).total_seconds())


def _in_transaction(dbapi_connection: Any) -> bool:
    """Whether a statement on this DB-API connection opened a transaction to end
    (psycopg2: an ``autocommit`` attribute; PyMySQL: ``get_autocommit()``)."""
    mode = getattr(dbapi_connection, "autocommit", True)
    if callable(mode):
        mode = dbapi_connection.get_autocommit()
    return not mode


def read_history_age(dbapi_connection: Any, identity: ServerIdentity, seen_by: str,
                     dialect: str = "postgresql") -> float:
    """Record ``identity``'s history as seen (if no master did before) and return
    ``history_elapsed`` for it; the statements are committed."""
    assert identity.timeline is not None
    _, record_sql, first_seen_sql = SQL[dialect]
    key = (str(identity.system_id), identity.timeline)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(record_sql, (*key, seen_by[:255]))
        cursor.execute(first_seen_sql, key)
        first_seen, now, others, checkpoint_timeline, checkpoint_time = cursor.fetchone()
    finally:
        cursor.close()
        if _in_transaction(dbapi_connection):
            dbapi_connection.commit()
    return history_elapsed(identity.timeline, first_seen, now, int(others),
                           checkpoint_timeline, checkpoint_time)


def read_identity(dbapi_connection: Any, dialect: str = "postgresql") -> ServerIdentity:
    """The identity of the server a fresh connection reached (one statement; the
    transaction it opened, if any, is ended)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(SQL[dialect][0])
        system_id, timeline, started = cursor.fetchone()
    finally:
        cursor.close()
        if _in_transaction(dbapi_connection):
            dbapi_connection.rollback()
    system = str(system_id) if dialect == "mysql" else int(system_id)
    return ServerIdentity(system, int(timeline, 16) if timeline else None, started)


class IdentityWatch:
    """Reads the server's identity on every new connection of an engine; thread-safe (the
    lanes and the history writer connect on their own threads)."""

    def __init__(self, engine: Engine | None = None,
                 monotonic: Callable[[], float] = time.monotonic, seen_by: str = "") -> None:
        self._lock = threading.Lock()
        self.monotonic = monotonic
        self.seen_by = seen_by
        self.age: HistoryAge | None = None  # of the current history, once read
        self.current: ServerIdentity | None = None
        self.epoch = 0  # changes of history seen (failovers); read from any thread
        self.restarts = 0  # the same server seen with a new start time
        self.changes: list[tuple[ServerIdentity, ServerIdentity]] = []
        self.unreadable = False
        self.dialect = "postgresql"
        if engine is not None:
            self.dialect = engine.dialect.name
            event.listen(engine, "connect", self._connected)

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        try:
            identity = read_identity(dbapi_connection, self.dialect)
        except Exception as exc:  # not fatal: the connection is used as before
            if not self.unreadable:
                log.warning("database: cannot read the server's identity (%s: %s); a failover"
                            " to a standby would not be noticed", type(exc).__name__, exc)
            self.unreadable = True
            self._rollback(dbapi_connection)
            return
        self.seen(identity)
        if identity.timeline is None or not self.needs_age(identity):
            return
        try:
            elapsed = read_history_age(dbapi_connection, identity, self.seen_by, self.dialect)
        except Exception as exc:
            self._rollback(dbapi_connection)
            if self.dialect == "postgresql" and identity.timeline == 1:
                # a promoted standby is on timeline 2 or later: a server on its first
                # timeline was never promoted, whatever the table could have said (it is
                # missing while the schema is older than 0013, which refuses sync scripts
                # until `db upgrade` anyway)
                log.info("database: cannot read when this server's history (%s) began (%s:"
                         " %s); on its first timeline, it was never promoted: no wait",
                         identity, type(exc).__name__, exc)
                elapsed = math.inf
            else:  # counted as just begun: the gate waits a full window
                log.warning("database: cannot read when this server's history (%s) began"
                            " (%s: %s); counted as a failover just now (is the schema"
                            " upgraded? `panda-daemon db upgrade`)", identity,
                            type(exc).__name__, exc)
                elapsed = 0.0
        # read after the statements: ``elapsed`` held when they ran, so at least as much has
        # passed by now (a reading taken before them would shorten the wait by their time)
        self.aged(HistoryAge(identity, elapsed, self.monotonic()))

    @staticmethod
    def _rollback(dbapi_connection: Any) -> None:
        try:
            dbapi_connection.rollback()
        except Exception:
            log.debug("rollback after a failed identity read", exc_info=True)

    def needs_age(self, identity: ServerIdentity) -> bool:
        """True until the history of ``identity`` has been aged (once per history)."""
        age = self.age
        return age is None or not age.identity.same_history(identity)

    def aged(self, age: HistoryAge) -> None:
        """When the current history began, read on a connection (keeps the latest read)."""
        with self._lock:
            current = self.current
            if current is None or age.identity.same_history(current):
                self.age = age

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

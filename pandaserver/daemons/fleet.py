"""The master's side of the shared database: leases, run history, heartbeats, outages.

One ``FleetDb`` per master, used only from its event loop. Every database call goes
through ``FleetDb.call``: the first failure starts an *outage* (one WARNING), further
attempts are made at most every ``probe_interval`` seconds (so a dead database never
stalls the loop on every dispatch), and the first success ends it (one INFO), flushes the
history kept meanwhile and retries the lease releases that failed.

During an outage sync scripts are skipped (never run without a lease); other scripts run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pandaserver import __version__
from pandaserver.config import PandaConfig
from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons import exitcodes
from pandaserver.daemons.clock import Clock
from pandaserver.daemons.history_writer import HistoryWriter
from pandaserver.daemons.leases import LeaseDecision
from pandaserver.daemons.runs import LogRecorder, RunRecord
from pandaserver.db import history as dbhistory
from pandaserver.db.engine import DatabaseConfigError, describe_db_error, make_engine, safe_url
from pandaserver.db.heartbeat import HeartbeatStore, config_hash
from pandaserver.db.leases import LeaseStore
from pandaserver.db.schema import SchemaError, ensure_schema

log = logging.getLogger("panda.master")
T = TypeVar("T")

PROBE_INTERVAL = 2.0
HISTORY_BATCH = 0.25
STATEMENT_TIMEOUT = 10.0  # a statement stuck on a lock must not freeze the master's loop
PRUNE_INTERVAL = 3600.0


class Unavailable(Exception):
    """The database cannot be used right now (an outage, or a schema this code refuses)."""


class Refused(Unavailable):
    """This one operation failed for a reason that is not an outage (a bug or bad data):
    logged with its traceback; retrying it would fail again."""


class FleetDb:
    def __init__(self, engine: Engine, server: str, settings: DaemonSettings,
                 monotonic: Callable[[], float], started_wall: datetime,
                 probe_interval: float = PROBE_INTERVAL,
                 wall: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.server = server
        self.pid = os.getpid()
        self.settings = settings
        self.monotonic = monotonic
        self.started_wall = started_wall
        self.wall = wall  # this master's wall clock, sent with heartbeats (skew display)
        self.probe_interval = probe_interval
        self.leases = LeaseStore(engine)
        self.history = dbhistory.HistoryStore(engine)
        self.beats = HeartbeatStore(engine)
        self.pending = dbhistory.PendingWrites()
        self.failed_releases: list[tuple[str, int]] = []
        self.down_since: float | None = None
        self.next_probe = 0.0
        self.schema_ok = False
        self.schema_problem: str | None = None
        self.next_beat = 0.0
        self.next_prune = 0.0
        self.batch: list[RunRecord] = []
        self.flush_at: float | None = None
        self.writer = HistoryWriter(self.history)

    # ----- outage handling ----------------------------------------------------------------
    def usable(self, now: float) -> bool:
        return self.down_since is None or now >= self.next_probe

    def call(self, what: str, operation: Callable[[], T]) -> T:
        now = self.monotonic()
        if not self.usable(now):
            raise Unavailable(what)
        try:
            if not self.schema_ok:
                ensure_schema(self.engine)
                self.schema_ok = True
            result = operation()
        except SchemaError as exc:
            if self.schema_problem != str(exc):
                log.error("database refused: %s; sync scripts are skipped", exc)
            self.schema_problem = str(exc)
            self._down(now, None)
            raise Unavailable(what) from exc
        except SQLAlchemyError as exc:
            self._down(now, exc)
            raise Unavailable(what) from exc
        except Exception as exc:  # never let it reach the master's loop
            log.exception("database %s failed", what)
            raise Refused(what) from exc
        if self.down_since is not None:
            self._up(now)
        return result

    def _down(self, now: float, exc: SQLAlchemyError | None) -> None:
        if self.down_since is None:
            self.down_since = now
            if exc is not None:
                log.warning("database unavailable: %s; sync scripts are skipped and history is"
                            " kept in memory until it returns",
                            describe_db_error(exc, self.engine.url))
        elif exc is not None:
            log.debug("database still unavailable: %s", describe_db_error(exc, self.engine.url))
        self.next_probe = now + self.probe_interval

    def _up(self, now: float) -> None:
        assert self.down_since is not None
        outage = now - self.down_since
        self.down_since = None
        self.schema_problem = None
        result = self.pending.flush(self.history)
        releases = self.failed_releases
        self.failed_releases = []
        for name, generation in releases:
            self.release(name, generation)
        dropped = f", {result.dropped} dropped for lack of room" if result.dropped else ""
        left = (f", {result.remaining} still waiting ({describe_db_error(result.error, self.engine.url)})"
                if result.error is not None else "")
        log.info("database available again after %.1f s: %d history row(s) written%s%s",
                 outage, result.written, dropped, left)

    # ----- leases -------------------------------------------------------------------------
    def acquire(self, spec: DaemonSpec) -> LeaseDecision:
        try:
            result = self.call("lease", lambda: self.leases.try_acquire(
                spec.name, self.server, self.pid, spec.period, spec.timeout,
                self.settings.lease_grace))
        except Unavailable:
            return LeaseDecision(granted=False, wait=self.probe_interval, unavailable=True)
        return LeaseDecision(granted=result.granted, generation=result.generation,
                             wait=result.wait, holder=result.holder)

    def release(self, name: str, generation: int | None) -> None:
        if generation is None:
            return
        try:
            released = self.call("release", lambda: self.leases.release(name, generation))
        except Unavailable:
            self.failed_releases.append((name, generation))
            return
        if not released:
            log.warning("%s: lease generation %d was no longer ours at release"
                        " (expired or force-released)", name, generation)

    # ----- history ------------------------------------------------------------------------
    def record(self, rec: RunRecord) -> None:
        """Queue a finished run; ``flush_history`` writes the queue in one transaction at
        most ``HISTORY_BATCH`` seconds later (one commit per batch, not per run)."""
        self.batch.append(rec)
        if self.flush_at is None:
            self.flush_at = self.monotonic() + HISTORY_BATCH

    def flush_history(self) -> None:
        """Hand the queued runs to the writer thread (or keep them, during an outage)."""
        if not self.batch:
            return
        now = self.monotonic()
        rows = [dbhistory.RunRecord(
            script=rec.script, server=rec.server, pid=rec.pid, outcome=rec.outcome,
            error=rec.error, generation=rec.generation, duration=max(0.0, rec.duration),
            ended_ago=max(0.0, now - rec.ended) if rec.ended else 0.0,
            due_before_start=max(0.0, rec.dispatch_delay)) for rec in self.batch]
        self.batch = []
        self.flush_at = None
        if self.down_since is not None or not self.schema_ok:
            for row in rows:
                self.pending.add(row)
            return
        self.writer.submit(rows)

    def collect_written(self) -> None:
        """Act on what the writer thread reports: an outage, or rows to drop."""
        now = self.monotonic()
        for result in self.writer.results():
            exc = result.error
            if exc is None:
                if self.down_since is not None:
                    self._up(now)
            elif isinstance(exc, SQLAlchemyError):
                self._down(now, exc)
                for row in result.rows:
                    self.pending.add(row)
            else:
                log.error("%d history row(s) dropped: %s: %s", len(result.rows),
                          type(exc).__name__, exc)

    def close(self) -> None:
        """At the master's stop: write what is queued, waiting a few seconds at most."""
        self.flush_history()
        for result in self.writer.close(timeout=5.0):
            if result.error is not None:
                log.error("%d history row(s) not written at stop: %s", len(result.rows),
                          describe_db_error(result.error, self.engine.url)
                          if isinstance(result.error, SQLAlchemyError) else result.error)

    # ----- periodic work: heartbeat and pruning --------------------------------------------
    def tick(self, now: float) -> float:
        """Write queued history, heartbeat and prune when due; returns when to be called next."""
        self.collect_written()
        if self.flush_at is not None and now >= self.flush_at:
            self.flush_history()
        probe = self.down_since is not None and now >= self.next_probe  # back yet?
        if (now >= self.next_beat or probe) and self.usable(now):
            digest = config_hash(self.settings.fingerprint())
            try:
                self.call("heartbeat", lambda: self.beats.beat(
                    self.server, self.pid, __version__, self.started_wall, digest,
                    server_time=self.wall() if self.wall is not None else None))
            except Unavailable:
                pass
            self.next_beat = now + self.settings.heartbeat_interval
        if now >= self.next_prune and self.down_since is None:
            days = self.settings.history_retention_days
            try:
                removed = self.call("prune", lambda: self.history.prune(days))
                if removed:
                    log.info("pruned %d history row(s) older than %g days", removed, days)
            except Unavailable:
                pass
            self.next_prune = now + PRUNE_INTERVAL
        wake = self.next_beat if self.flush_at is None else min(self.next_beat, self.flush_at)
        if self.writer.busy:  # look for the writer's answer soon (it needs no wake-up of ours)
            wake = min(wake, now + HISTORY_BATCH)
        if self.down_since is not None:
            wake = min(wake, self.next_probe)
        return max(wake, now + 0.001)


class DbLeases:
    """``LeaseManager`` backed by ``FleetDb``."""

    def __init__(self, fleet: FleetDb) -> None:
        self.fleet = fleet

    def acquire(self, spec: DaemonSpec) -> LeaseDecision:
        return self.fleet.acquire(spec)

    def release(self, name: str, generation: int | None) -> None:
        self.fleet.release(name, generation)


class DbRecorder:
    """``Recorder`` that logs each run and writes it to the history table."""

    def __init__(self, fleet: FleetDb) -> None:
        self.fleet = fleet
        self.log = LogRecorder()

    def record(self, record: RunRecord) -> None:
        self.log.record(record)
        self.fleet.record(record)



class StartupError(Exception):
    """The master must not start; ``code`` is its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_fleet(cfg: PandaConfig, server: str, clock: Clock) -> FleetDb:
    """Connect to the configured database and check its schema (upgrading SQLite).

    A newer schema, or an older one on a shared server database, refuses the start; an
    unreachable database does not: the master starts in an outage and resumes by itself.
    """
    try:
        # autocommit without a ping: one round trip per lease grant (lease statements retry
        # once on a fresh connection after a dropped one)
        engine = make_engine(cfg, autocommit=True, pre_ping=False,
                             statement_timeout=STATEMENT_TIMEOUT)
    except (DatabaseConfigError, KeyError, ValueError) as exc:
        raise StartupError(exitcodes.RET_CONFIG, f"database settings: {exc}") from None
    fleet = FleetDb(engine, server, cfg.daemon, clock.monotonic, clock.wall(), wall=clock.wall)
    try:
        ensure_schema(engine)
        fleet.schema_ok = True
    except SchemaError as exc:
        raise StartupError(exitcodes.RET_SCHEMA, str(exc)) from None
    except SQLAlchemyError as exc:
        fleet._down(clock.monotonic(), exc)
    log.info("database: %s", safe_url(engine.url))
    return fleet

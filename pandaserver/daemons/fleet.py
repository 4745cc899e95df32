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
import uuid
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
from pandaserver.daemons.history_keeper import HistoryKeeper
from pandaserver.daemons.leases import LeaseDecision
from pandaserver.daemons.runs import LogRecorder, Run, RunRecord
from pandaserver.daemons.spool import Spool, spool_path
from pandaserver.db import history as dbhistory
from pandaserver.db.engine import (
    DatabaseConfigError,
    default_state_dir,
    describe_db_error,
    make_engine,
    safe_url,
)
from pandaserver.db.heartbeat import HeartbeatStore, config_hash
from pandaserver.db.leases import LeaseStore
from pandaserver.db.schema import SchemaError, ensure_schema

log = logging.getLogger("panda.master")
T = TypeVar("T")

PROBE_INTERVAL = 2.0
FLUSH_AT_STOP = 5.0  # seconds the stop waits for history writes (within stop's margin)
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
                 wall: Callable[[], datetime] | None = None, member: bool = True) -> None:
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
        self.failed_releases: list[tuple[str, int]] = []
        self.down_since: float | None = None
        self.next_probe = 0.0
        self.schema_ok = False
        self.schema_problem: str | None = None
        self.next_beat = 0.0
        self.next_prune = 0.0
        self.master_id = uuid.uuid4().hex  # this master's runs in the history
        self.keeper = HistoryKeeper(
            self.history, server=server, master_id=self.master_id, master_pid=self.pid,
            monotonic=monotonic, heartbeat_interval=lambda: self.settings.heartbeat_interval,
            url=engine.url, on_outage=lambda exc: self._down(self.monotonic(), exc),
            on_written=self._history_written, member=member)

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
        kept = len(self.keeper.pending)
        self.keeper.resume()  # the writer thread writes what was kept meanwhile
        releases = self.failed_releases
        self.failed_releases = []
        for name, generation in releases:
            self.release(name, generation)
        log.info("database available again after %.1f s; writing the %d history row(s) kept"
                 " meanwhile", outage, kept)

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

    # ----- history (``HistoryKeeper``: batched on a writer thread, spooled at stop) -------
    def history_usable(self) -> bool:
        return self.down_since is None and self.schema_ok

    def record_start(self, run: Run) -> None:
        """A run was dispatched: its ``running`` row is written in the next batch."""
        self.keeper.start(run)

    def record(self, rec: RunRecord) -> None:
        """Queue a finished run; written in one batch (one commit) at most
        ``HISTORY_BATCH`` seconds later."""
        self.keeper.end(rec)

    def flush_history(self) -> None:
        self.keeper.flush(self.history_usable())

    def collect_written(self) -> None:
        """Act on what the writer thread reports: an outage, or the end of one."""
        self.keeper.collect()

    def _history_written(self) -> None:
        if self.down_since is not None:
            self._up(self.monotonic())

    def close(self) -> None:
        """At the master's stop: write what is queued (waiting ``FLUSH_AT_STOP`` s at most);
        what is left is kept in the spool file and reported."""
        self.keeper.close(self.history_usable(), FLUSH_AT_STOP)

    # ----- periodic work: heartbeat and pruning --------------------------------------------
    def tick(self, now: float) -> float:
        """Write queued history, heartbeat and prune when due; returns when to be called next."""
        history_wake = self.keeper.tick(now, self.history_usable())
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
        wake = min(self.next_beat, history_wake)
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

    def start(self, run: Run) -> None:
        self.fleet.record_start(run)

    def record(self, record: RunRecord) -> None:
        self.log.record(record)
        self.fleet.record(record)



class StartupError(Exception):
    """The master must not start; ``code`` is its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_fleet(cfg: PandaConfig, server: str, clock: Clock, member: bool = True) -> FleetDb:
    """Connect to the configured database and check its schema (upgrading SQLite).

    A newer schema, or an older one on a shared server database, refuses the start; an
    unreachable database does not: the master starts in an outage and resumes by itself.
    ``member``: a master of the fleet (not ``run-once``): it records run starts, replays
    the history spooled by the last master of ``server`` and closes that master's open runs.
    """
    try:
        # autocommit without a ping: one round trip per lease grant (lease statements retry
        # once on a fresh connection after a dropped one)
        engine = make_engine(cfg, autocommit=True, pre_ping=False,
                             statement_timeout=STATEMENT_TIMEOUT)
    except (DatabaseConfigError, KeyError, ValueError) as exc:
        raise StartupError(exitcodes.RET_CONFIG, f"database settings: {exc}") from None
    fleet = FleetDb(engine, server, cfg.daemon, clock.monotonic, clock.wall(), wall=clock.wall,
                    member=member)
    try:
        ensure_schema(engine)
        fleet.schema_ok = True
    except SchemaError as exc:
        raise StartupError(exitcodes.RET_SCHEMA, str(exc)) from None
    except SQLAlchemyError as exc:
        fleet._down(clock.monotonic(), exc)
    log.info("database: %s", safe_url(engine.url))
    if member:
        fleet.keeper.at_start(Spool(spool_path(default_state_dir(), server)),
                              fleet.history_usable())
    return fleet

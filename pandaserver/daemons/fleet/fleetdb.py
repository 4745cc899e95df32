"""The master's side of the shared database: leases, run history, heartbeats, outages.

(The lease calls themselves, and who of the fleet asks for a grant: daemons/fleet/dbleases.py.)

One ``FleetDb`` per master, driven from its event loop, which it never blocks: every
statement runs on a lane thread (``lanes.py``): ``lease`` (grants and releases),
``renew`` (renewals of held leases: never queued behind a slow grant), ``house``
(heartbeats, pruning, replaying history kept during an outage) and ``look`` (the reads of
the lease table that tell a server whether a script was granted: never delaying a
heartbeat, see dbleases.py); history batches have their
own writer thread (``HistoryKeeper``). Results come back through ``Completions`` and are
acted on by the loop.

A failed or timed-out call starts an *outage* (one WARNING, shown in status, fleet and
/metrics); while it lasts, grants are answered "unavailable" at once and only probes (the
heartbeat, every ``probe_interval`` seconds counted from the end of the failed call) and
renewals reach the database; the first success ends it (one INFO), replays the history kept
meanwhile (on the history writer thread) and retries the lease releases that failed.

During an outage sync scripts are skipped (never run without a lease); other scripts run.

A master's ``FleetDb`` is made at start by ``open_fleet`` (opening.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pandaserver import __version__
from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base.clock import slack_due
from pandaserver.daemons.base.runs import Run, RunRecord
from pandaserver.daemons.fleet.failover import FailoverGate
from pandaserver.daemons.fleet.history.keeper import HistoryKeeper
from pandaserver.daemons.fleet.history.pruner import PruneSchedule
from pandaserver.daemons.fleet.lanes import (
    Chore,
    Completions,
    ConnectionTracker,
    Lane,
    Op,
    Unavailable,
    chores_call,
)
from pandaserver.daemons.fleet.listener import CommandListener
from pandaserver.db.base.engine import (
    describe_db_error,
    safe_url,
)
from pandaserver.db.base.schema import SchemaError, ensure_schema
from pandaserver.db.base.serverid import IdentityWatch, ServerChanged
from pandaserver.db.stores import history as dbhistory
from pandaserver.db.stores.grantrun import Ended
from pandaserver.db.stores.heartbeat import HeartbeatStore, config_hash
from pandaserver.db.stores.leases import Holder, LeaseStore

log = logging.getLogger("panda.master")
T = TypeVar("T")

PROBE_INTERVAL = 2.0
STATEMENT_TIMEOUT = 4.0  # server side: a statement stuck on a lock
IO_TIMEOUT = 4.0  # client side: a connection with no answer (tcp_user_timeout, read timeout)
CALL_TIMEOUT = 5.0  # the master's own bound on a lease, renewal or heartbeat call
HOUSE_TIMEOUT = 30.0  # a pruning step and replaying a backlog may take longer


class FleetDb:
    def __init__(self, engine: Engine, server: str, settings: DaemonSettings,
                 monotonic: Callable[[], float], started_wall: datetime,
                 probe_interval: float = PROBE_INTERVAL,
                 wall: Callable[[], datetime] | None = None,
                 call_timeout: float = CALL_TIMEOUT, member: bool = True,
                 master_id: str | None = None) -> None:
        self.engine = engine
        self.server = server
        self.pid = os.getpid()
        self.settings = settings
        self.monotonic = monotonic
        self.started_wall = started_wall
        self.wall = wall  # this master's wall clock, sent with heartbeats (skew display)
        self.probe_interval = probe_interval
        self.call_timeout = call_timeout
        self.member = member  # a master of the fleet (not run-once)
        self.leases = LeaseStore(engine)
        # which server each new connection reached (PostgreSQL): a failover closes the gate
        self.identity = (IdentityWatch(engine, monotonic, f"{server} pid {self.pid}")
                         if engine.dialect.name in ("postgresql", "mysql") else None)
        self.gate = FailoverGate(self.identity, lambda: self.settings.lease_ttl, monotonic)
        self.leases.guard = self.gate.check
        self.history = dbhistory.HistoryStore(engine)
        self.beats = HeartbeatStore(engine)
        self.failed_releases: list[tuple[str, int]] = []
        self.at_close: list[Callable[[], None]] = []  # first thing at close (deferred releases)
        self.down_since: float | None = None
        self.outages = 0
        self.next_probe = 0.0
        self.schema_ok = False
        self.schema_problem: str | None = None
        self.next_beat = 0.0
        self.pruner = PruneSchedule(engine, lambda: self.settings)  # pruner.py
        # this master's runs in the history (given: chosen before this was made, late.py)
        self.master_id = master_id or uuid.uuid4().hex
        self.holder = Holder(server, self.pid, self.master_id)  # ... and its leases
        self.completions = Completions()
        self.keeper = HistoryKeeper(
            self.history, server=server, master_id=self.master_id, master_pid=self.pid,
            monotonic=monotonic, heartbeat_interval=lambda: self.settings.heartbeat_interval,
            url=engine.url, on_outage=lambda exc: self._down(self.monotonic(), exc),
            on_written=self._history_written, member=member,
            abandoned=self.beats.abandoned_runs, wake=self.completions.wake)
        tracker = ConnectionTracker(engine)
        self.lanes = {name: Lane(name, self.completions, tracker)
                      for name in ("lease", "renew", "house", "look")}
        # PostgreSQL pushes the operators' commands to the fleet's masters (listener.py)
        self.listener = (CommandListener(engine, probe_interval)
                         if member and CommandListener.supported(engine) else None)
        self.chores: list[Chore] = []  # house calls sent with the next tick's (``house``)
        self._digest: tuple[DaemonSettings | None, str] = (None, "")  # the config hash

    # ----- the loop's side of the lanes ---------------------------------------------------
    def fileno(self) -> int:
        """Readable when a database call has come back (the master's wait watches it)."""
        return self.completions.fileno()

    def defer_calls(self, defer: bool) -> None:
        """``defer``: calls reach the lanes' threads only at ``start_calls`` (the loop calls
        it just before it sleeps: one wake-up of a lane, no hand-over of the interpreter
        lock while the loop still runs)."""
        for lane in self.lanes.values():
            lane.defer = defer
        if not defer:
            self.start_calls()

    def start_calls(self) -> None:
        for lane in self.lanes.values():
            lane.start()

    def collect(self) -> None:
        """Act on every call that came back (on the loop thread)."""
        self.notice_failover(self.monotonic())  # before the answers: they may predate it
        for lane, op in self.completions.drain():
            now = self.monotonic()
            current = lane.finished(op, now)
            op.done(op.result, op.error, not current)

    def check_deadlines(self, now: float) -> None:
        """Give up on calls past their deadline: the database is not answering."""
        for lane in self.lanes.values():
            deadline = lane.next_deadline()
            if deadline is not None and now >= deadline:
                op = lane.abandon(now)
                if op is not None:
                    log.debug("database %s call abandoned after %.1f s", op.what, op.timeout)
                    op.done(None, TimeoutError(f"no answer from the database in {op.timeout:g} s"
                                               f" ({op.what})"), False)

    def next_deadline(self) -> float | None:
        found = [d for lane in self.lanes.values() if (d := lane.next_deadline()) is not None]
        return min(found) if found else None

    def _submit(self, lane: str, what: str, operation: Callable[[], T],
                done: Callable[[T | None, BaseException | None, bool], None],
                timeout: float | None = None) -> None:
        """Run ``operation`` on a lane (with the schema checked first, until it is);
        ``done(result, error, late)`` runs on the loop thread. Errors are classified here:
        an outage for database errors and timeouts, a logged bug for anything else."""
        check_schema = not self.schema_ok

        def run() -> T:
            if check_schema:
                ensure_schema(self.engine)
            return operation()

        def finished(result: Any, error: BaseException | None, late: bool) -> None:
            now = self.monotonic()
            if late:
                done(result, error, True)
                return
            if error is None:
                self.schema_ok = True
                if self.down_since is not None:
                    self._up(now)
            else:
                self._failed(what, error, now)
            done(result, error, False)

        self.lanes[lane].submit(Op(what, run, finished, timeout or self.call_timeout),
                                self.monotonic())

    def _failed(self, what: str, exc: BaseException, now: float) -> None:
        if isinstance(exc, Unavailable | ServerChanged):  # the gate acts on ServerChanged
            return
        if isinstance(exc, SchemaError):
            if self.schema_problem != str(exc):
                log.error("database refused: %s; sync scripts are skipped", exc)
            self.schema_problem = str(exc)
            self.schema_ok = False
            self._down(now, None)
        elif isinstance(exc, SQLAlchemyError | TimeoutError):
            self._down(now, exc)
        else:  # a bug or bad data: retrying would fail again; never an outage
            log.error("database %s failed", what, exc_info=exc)

    # ----- failover of the database (failover.py) ----------------------------------------
    def notice_failover(self, now: float) -> None:
        """When a connection reached another server than before: close the lease gate and
        re-send the history the new server may lack."""
        if self.gate.notice(now):
            self.keeper.resend_recent(self.history_usable())
            if self.listener is not None:  # it may still listen on the demoted server
                self.listener.close()
                self.listener.next_try = now  # listening again (and a read) on the next turn

    # ----- outage handling ----------------------------------------------------------------
    def usable(self, now: float) -> bool:
        return self.down_since is None or now >= self.next_probe

    def _down(self, now: float, exc: BaseException | None) -> None:
        """``now``: when the failed call came back, so the next probe waits a full interval."""
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            for op in self.lanes["lease"].drop_pending():  # grants queued behind the failure
                op.done(None, Unavailable(op.what), False)
            if exc is not None:
                log.warning("database unavailable: %s; sync scripts are skipped and history is"
                            " kept in memory until it returns", self._describe(exc))
        elif exc is not None:
            log.debug("database still unavailable: %s", self._describe(exc))
        self.next_probe = now + self.probe_interval

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, SQLAlchemyError):
            return describe_db_error(exc, self.engine.url)
        return f"database {safe_url(self.engine.url)}: {exc}"

    def _up(self, now: float) -> None:
        assert self.down_since is not None
        outage = now - self.down_since
        self.down_since = None
        self.schema_problem = None
        releases = self.failed_releases
        self.failed_releases = []
        for name, generation in releases:
            self.release(name, generation)
        log.info("database available again after %.1f s; writing the %d history row(s) kept"
                 " meanwhile", outage, len(self.keeper.pending))
        self.keeper.resume()  # on the history writer thread

    # ----- leases (grants and renewals: ``DbLeases``, daemons/fleet/dbleases.py) -----------
    def release(self, name: str, generation: int | None, ended: Ended | None = None) -> None:
        """Release ``name``'s lease ``generation`` (``ended``: how this master's run under
        it ended, written by the same statement: db/stores/grantrun.py)."""
        if generation is None:
            return

        def done(result: Any, error: BaseException | None, late: bool) -> None:
            if late:
                return
            if error is not None:
                self.failed_releases.append((name, generation))
            elif not result:
                log.warning("%s: lease generation %d was no longer ours at release"
                            " (expired or force-released)", name, generation)

        if self.down_since is not None and not self.usable(self.monotonic()):
            self.failed_releases.append((name, generation))
            return
        self._submit("lease", "release",
                     lambda: self.leases.release(name, generation, self.holder, ended), done)

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

    def close(self, timeout: float = 5.0) -> None:
        """At the master's stop: finish the calls under way (lease releases above all) and
        write what is queued, waiting ``timeout`` seconds at most in all (what is left is
        kept in the spool file, written at the next start)."""
        import selectors

        deadline = self.monotonic() + timeout
        for hook in self.at_close:
            hook()
        self.flush_history()
        with selectors.DefaultSelector() as sel:
            sel.register(self.fileno(), selectors.EVENT_READ)
            while any(lane.busy for lane in self.lanes.values()):
                now = self.monotonic()
                if now >= deadline:
                    break
                self.check_deadlines(now)
                wait = min(deadline, self.next_deadline() or deadline) - now
                sel.select(max(0.0, wait))
                self.collect()
        for lane in self.lanes.values():
            for op in lane.drop_pending():
                log.error("database %s not done at stop", op.what)
            lane.close()
        if self.listener is not None:
            self.listener.close()
        # what is not written in time is kept in the spool file and reported
        self.keeper.close(self.history_usable(), max(0.1, deadline - self.monotonic()))
        self.completions.close()

    # ----- periodic work: heartbeat and pruning --------------------------------------------
    def tick(self, now: float) -> float:
        """Write queued history, heartbeat and prune when due; returns when to be called next.
        Never waits for the database: the calls run on the ``house`` lane. The heartbeat
        goes out early when the loop is awake anyway within its slack (``slack_due``), so
        that it shares a wake-up with the command read and the history sweep."""
        self.notice_failover(now)
        history_wake = self.keeper.tick(now, self.history_usable())
        house = self.lanes["house"]
        probe = self.down_since is not None and now >= self.next_probe  # back yet?
        interval = self.settings.heartbeat_interval
        chores, self.chores = self.chores, []
        beat = ((slack_due(now, self.next_beat, interval) or probe) and self.usable(now)
                and not house.busy)
        if beat:
            self.next_beat = now + interval
        # due with the heartbeat (same interval and slack): its look rides on the beat
        sweep = self.keeper.sweep_due(now, self.history_usable())
        if beat:
            chores.insert(0, self._beat(sweep))
        elif sweep is not None:
            chores.append(Chore("sweep of dead masters' runs", lambda: sweep(None),
                                lambda closed, error, late: self.keeper.swept(closed)))
        if chores:
            self.house(chores)
        listener = self.listener
        # not during an outage: the heartbeat probes; listening begins once it answers
        if listener is not None and listener.wanted(now) and self.down_since is None:
            listener.connecting = True
            self._submit("house", "listen", listener.open,
                         lambda raw, error, late: listener.opened(raw, error, late,
                                                                  self.monotonic()))
        if self.pruner.due(now) and self.down_since is None and not house.busy:
            self._prune(now)
        wake = min(self.next_beat, history_wake)
        if self.keeper.member and self.history_usable():
            wake = min(wake, self.keeper.next_sweep)
        if self.down_since is None and not house.busy:  # else its end wakes the loop anyway
            wake = min(wake, self.pruner.next_at)
        if self.down_since is not None:
            wake = min(wake, self.next_probe)
        if (listener is not None and listener.conn is None and not listener.connecting
                and self.down_since is None):  # during an outage: its probe wakes the loop
            wake = min(wake, listener.next_try)
        deadline = self.next_deadline()
        if deadline is not None:
            wake = min(wake, deadline)
        return max(wake, now + 0.001)

    def _beat(self, sweep: Callable[[bool | None], int] | None = None) -> Chore:
        """The heartbeat; with ``sweep``, the sweep of dead masters' runs too: the beat's
        statement looks for such runs (on PostgreSQL in the same round trip) and the sweep
        runs only when it found one."""
        if self._digest[0] is not self.settings:  # once per configuration, not per beat
            self._digest = (self.settings, config_hash(self.settings.fingerprint()))
        digest = self._digest[1]
        wall = self.wall() if self.wall is not None else None
        beats, server, pid, started = self.beats, self.server, self.pid, self.started_wall
        if sweep is None:
            return Chore("heartbeat", lambda: beats.beat(
                server, pid, __version__, started, digest, server_time=wall),
                lambda result, error, late: None)
        stale, master_id, keeper = self.keeper.stale_after(), self.master_id, self.keeper

        def run() -> int:
            return sweep(beats.beat(server, pid, __version__, started, digest,
                                    server_time=wall, abandoned_after=stale,
                                    except_master=master_id))

        return Chore("heartbeat + sweep of dead masters' runs", run,
                     lambda closed, error, late: keeper.swept(closed))

    def house(self, chores: list[Chore]) -> None:
        """``chores`` as one call of the ``house`` lane: one wake-up of the lane and one
        answer for all (a heartbeat, the sweep, the command read); each ``done`` as if
        it had been a call of its own."""
        self._submit("house", *chores_call(chores, lambda what, exc: self._failed(
            what, exc, self.monotonic())))

    def _prune(self, now: float) -> None:
        """One step of a pruning pass (at most a batch of rows; pruner.py)."""

        def done(result: Any, error: BaseException | None, late: bool) -> None:
            if not late:
                self.pruner.finished(result, error, self.monotonic())

        self._submit("house", "prune", self.pruner.op(now), done, timeout=HOUSE_TIMEOUT)

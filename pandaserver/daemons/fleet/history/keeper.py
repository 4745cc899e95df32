"""The master's run history: one row per dispatched run, whatever happens to the master.

Used only from the master's loop (``FleetDb`` owns one); the writes themselves run on the
``HistoryWriter`` thread.

- At dispatch a run's *start* is queued (a ``running`` row), at its end its *outcome*;
  both are keyed by (this master's random id, run number), so a write may be replayed
  without adding a row. Queued writes go to the writer at most ``HISTORY_BATCH`` seconds
  later, as one batch (one transaction).
- During an outage (the ``usable`` flag the master passes is False) writes are kept in a
  bounded ``PendingWrites``; writes that fail with an outage error go back there and the
  master is told (``on_outage``); when the database is back (``resume``, and at every tick
  while nothing is in flight) they are written.
- Runs of dead masters are closed as ``lost``: at this master's start those of earlier
  masters of its server (``mark_lost``), and every heartbeat interval those of any master
  with no heartbeat for ``LOST_AFTER_BEATS`` intervals (``close_abandoned``, sent by the
  fleet in its heartbeat's call: ``sweep_due``; a read looks first, so the sweep's
  transaction runs only when it has runs to close). A start under
  a new lease generation closes the older generation's open run (``write_many``).
- At stop, whatever is not written after ``close``'s wait is saved in the spool file and
  reported with its count; the next start replays it (``spool.py``).
- Each start and end is also appended to the journal file before it is queued, so a
  ``kill -9`` loses none (``journal.py``): the next start replays them before closing the
  previous master's open runs, so a run that ended ``ok`` stays ``ok``.
- The writes of the last ``RESEND_WINDOW`` seconds are kept after they are written: when
  the database fails over to a standby that may not have received them
  (``failover.py``), they are written again (``resend_recent``); being keyed, those the
  standby had are not doubled.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from pandaserver import exitcodes
from pandaserver.daemons.base import runs
from pandaserver.daemons.base.clock import slack_due
from pandaserver.daemons.fleet.history.journal import Journal, run_start
from pandaserver.daemons.fleet.history.spool import Spool
from pandaserver.daemons.fleet.history.writer import HistoryWriter, Stamped, Written, is_outage
from pandaserver.db.base.engine import STATE_DIR_ENV, describe_db_error
from pandaserver.db.stores import history as dbhistory
from pandaserver.db.stores.grantrun import Ended
from pandaserver.db.stores.pending import PendingWrites

log = logging.getLogger("panda.master")

HISTORY_BATCH = 0.25
LOST_AFTER_BEATS = 3.0  # a master silent for this many heartbeat intervals is dead
RESUBMIT = 2.0  # pending rows are retried at least this often while the database is usable
# writes kept after they are written, to re-send after a failover of the database: an
# asynchronous standby is normally well under a second behind; this covers minutes
RESEND_WINDOW = 300.0
RESEND_MAX = 20000


def _key(item: Any) -> tuple[str, Any, Any]:
    return (type(item).__name__, getattr(item, "master_id", None), getattr(item, "run_id", None))


class HistoryKeeper:
    def __init__(self, history: dbhistory.HistoryStore, *, server: str, master_id: str,
                 master_pid: int, monotonic: Callable[[], float],
                 heartbeat_interval: Callable[[], float], url: URL,
                 on_outage: Callable[[SQLAlchemyError], None],
                 on_written: Callable[[], None], member: bool = True,
                 abandoned: Callable[[float, str], bool] | None = None,
                 wake: Callable[[], None] | None = None) -> None:
        self.history = history
        self.server = server
        self.master_id = master_id
        self.master_pid = master_pid
        self.monotonic = monotonic
        self.heartbeat_interval = heartbeat_interval
        self.url = url
        self.on_outage = on_outage
        self.on_written = on_written
        self.member = member  # a fleet member (not run-once): starts, sweeps, spool
        # (stale after, this master's id) -> whether the sweep has anything to close
        self.abandoned = abandoned
        self.pending = PendingWrites(clock=monotonic)
        self.batch: list[Stamped] = []
        self.flush_at: float | None = None
        self.writer = HistoryWriter(history, monotonic, wake)  # each answer wakes the loop
        self.spool: Spool | None = None
        self.spooled: set[tuple[str, Any, Any]] = set()  # keys replayed, not yet written
        self.journal: Journal | None = None  # starts not in the database yet, in a file
        self.next_sweep = 0.0
        self.mark_lost_due = False
        self.next_resubmit = 0.0
        self.written = 0  # rows written since the start (for status)
        self.recent: deque[tuple[float, Stamped]] = deque(maxlen=RESEND_MAX)  # (written at, row)
        self.resent = 0  # rows re-sent after failovers of the database
        self.lost: list[str] = []  # history lost at stop, one line each (the exit status)
        # the last run under a lease that ended, per script, and when (monotonic): its end
        # may be written by this master's next grant of that lease (``ended_under``)
        self.last_ends: dict[str, tuple[dbhistory.RunRecord, float]] = {}

    # ----- what the loop records ----------------------------------------------------------
    def start(self, run: runs.Run) -> None:
        """A run was just dispatched: queue its ``running`` row."""
        if not self.member:  # run-once sends no heartbeat: its open row would look dead
            return
        item = run_start(run, self.server, self.master_id, self.master_pid)
        if self.journal is not None:  # first: a kill -9 must not take the run's only trace
            self.journal.append(run.dispatched, item)
        self._queue(run.dispatched, item)

    def end(self, rec: runs.RunRecord) -> None:
        """A run ended (or an attempt was skipped): queue its final row."""
        item = dbhistory.RunRecord(
            script=rec.script, server=rec.server, pid=rec.pid, outcome=rec.outcome,
            error=rec.error, generation=rec.generation, duration=max(0.0, rec.duration),
            due_before_start=max(0.0, rec.dispatch_delay), master_id=self.master_id,
            master_pid=self.master_pid, run_id=rec.run_id)
        made = rec.ended or self.monotonic()
        if rec.generation is not None:
            self.last_ends[rec.script] = (item, made)
        if self.journal is not None and self.member:  # first, as a start: a kill -9 before
            self.journal.append(made, item)  # the write lands must not make the run lost
        self._queue(made, item)

    def not_run(self, script: str, generation: int, run_id: int) -> None:
        """Run ``run_id`` of ``script``, whose lease grant (``generation``) wrote its
        ``running`` row, never started: remove that row (db/stores/grantrun.py)."""
        master_id = self.master_id

        def forget(history: dbhistory.HistoryStore) -> int:
            history.forget_unrun(master_id, run_id)
            return 0  # closes no run as lost (what a call's value reports)

        self.writer.submit(call=forget, what=f"removing the row of {script} run {run_id}"
                                             f" (lease generation {generation}, not run)")

    def ended_under(self, script: str, generation: int) -> Ended | None:
        """How this master's run of ``script`` under lease ``generation`` ended, for the
        grant that releases that generation to write it (db/stores/grantrun.py): a kill
        before the history batch is written then leaves it as it ended, not ``lost``.
        None when that run is not the last one ended here. ``ended_ago`` counts from now
        (the loop's call; the lane adds its own wait: ``Ended.later``)."""
        found = self.last_ends.get(script)
        if found is None or found[0].generation != generation:
            return None
        item, made = found
        if item.run_id is None:
            return None
        return Ended(item.run_id, item.outcome, item.error,
                     max(0.0, self.monotonic() - made))

    def _queue(self, made: float, item: dbhistory.PendingItem) -> None:
        self.batch.append((made, item))
        if self.flush_at is None:
            self.flush_at = self.monotonic() + HISTORY_BATCH

    @property
    def waiting(self) -> int:
        """Writes not in the database yet (queued, kept during an outage, or in flight)."""
        return len(self.batch) + len(self.pending) + sum(
            len(job.rows) for job in self.writer.inflight.values())

    # ----- start ---------------------------------------------------------------------------
    def at_start(self, spool: Spool, usable: bool, journal: Journal | None = None) -> None:
        """Replay what the last master of this server spooled or journaled; close its open
        runs (once the replay is handed to the writer: ``tick``)."""
        if journal is not None:
            self.journal = journal
            started = journal.load()
            if started:
                # this master's own: runs started before its database side was opened
                # (daemons/fleet/late.py), journaled as any other
                earlier = [row for row in started
                           if getattr(row[1], "master_id", None) != self.master_id]
                if earlier:
                    log.info("replaying %d run start(s) kept in %s by the last master",
                             len(earlier), journal.path)
                self._send(started, usable)
        rows = spool.load(self.monotonic())
        self.spool = spool if rows is not None else None  # never overwrite an unread file
        why = spool.unwritable()
        if why is not None:
            log.warning("history: cannot write in the state directory %s (%s): runs the master"
                        " has not written to the database when it stops (during an outage)"
                        " could not be kept for the next start and would be lost (exit %d);"
                        " make the directory writable by uid %d with free space, or set %s to"
                        " one that is", spool.path.parent, why, exitcodes.RET_HISTORY_LOST,
                        os.geteuid(), STATE_DIR_ENV)
        if rows:
            log.info("replaying %d history write(s) kept in %s at the last stop", len(rows),
                     spool.path)
            self.spooled = {_key(item) for _, item in rows}
            self._send(rows, usable)
        elif rows == []:
            spool.remove()
        self.mark_lost_due = self.member

    # ----- the loop's timer ------------------------------------------------------------------
    def tick(self, now: float, usable: bool) -> float:
        """Collect the writer's results, hand over due writes, start due sweeps; returns
        when to be called next."""
        self.collect()
        if self.flush_at is not None and now >= self.flush_at:
            self.flush(usable)
        if usable and self.pending and not self.writer.busy and now >= self.next_resubmit:
            self.resume()
        if usable and self.mark_lost_due and not self.pending:  # after the replay
            self.mark_lost_due = False
            why = (f"its master was gone when a new master of {self.server} started"
                   f" (pid {self.master_pid}): it died or was killed during the run")
            self.writer.submit(call=lambda h: h.mark_lost(self.server, self.master_id, why),
                               what="runs of the previous master of this server")
        interval = self.heartbeat_interval()
        # the sweep's time is the fleet's to wake for (``sweep_due``, sent with a heartbeat);
        # the writer's answers wake the loop themselves (``wake``): no timed look for them
        wake = self.flush_at if self.flush_at is not None else now + interval
        if self.pending and usable and not self.writer.busy:  # else its answer wakes us
            wake = min(wake, self.next_resubmit)
        return wake

    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a master is dead (its runs ``lost``)."""
        return LOST_AFTER_BEATS * self.heartbeat_interval()

    def sweep_due(self, now: float, usable: bool) -> Callable[[bool | None], int] | None:
        """The sweep of dead masters' open runs when it is due (then the next is set), which
        the fleet sends with its heartbeat (one wake-up for both). ``sweep(found)`` runs on
        the lane: ``found`` is what a look for such runs said (the heartbeat's statement
        looks too: ``HeartbeatStore.beat``), None to look first (``abandoned``); the
        sweep's transaction runs only when one was found."""
        interval = self.heartbeat_interval()
        if not (usable and self.member and slack_due(now, self.next_sweep, interval)):
            return None
        self.next_sweep = now + interval
        stale = self.stale_after()
        history, master_id, abandoned = self.history, self.master_id, self.abandoned

        def sweep(found: bool | None) -> int:
            if found is None and abandoned is not None:
                found = abandoned(stale, master_id)
            if found is False:
                return 0
            return history.close_abandoned(stale, master_id)

        return sweep

    def swept(self, closed: int | None) -> None:
        """The sweep's answer (None: it failed; the fleet said why)."""
        if closed:
            log.info("closed %d open run(s) as lost: runs of masters silent for %g s", closed,
                     self.stale_after())

    def flush(self, usable: bool) -> None:
        """Hand the queued writes to the writer thread (or keep them, during an outage)."""
        rows, self.batch, self.flush_at = self.batch, [], None
        self._send(rows, usable)

    def _send(self, rows: list[Stamped], usable: bool) -> None:
        if not rows:
            return
        if usable:
            self.writer.submit(rows)
        else:
            for made, item in rows:
                self.pending.add(item, made)

    def resume(self) -> None:
        """The database is usable again: write what was kept."""
        self.next_resubmit = self.monotonic() + RESUBMIT
        rows = self.pending.take()
        if rows:
            self.writer.submit(rows)

    def collect(self) -> None:
        """Act on what the writer thread reports."""
        for result in self.writer.results():
            self._collected(result)

    def _collected(self, result: Written) -> None:
        for made, item in result.failed:  # kept for a later try (order does not matter)
            self.pending.add(item, made)
        for (_, item), exc in result.refused:
            log.error("history row of %s run %s refused, dropped: %s",
                      getattr(item, "script", "?"), getattr(item, "run_id", "?"),
                      self._describe(exc))
        done = result.written + [row for row, _ in result.refused]
        self.written += len(result.written)
        self._remember(result.written)
        if self.journal is not None:
            self.journal.written(item for _, item in done)
        if self.spooled:
            self.spooled.difference_update(_key(item) for _, item in done)
            if not self.spooled and self.spool is not None:
                log.info("history kept at the last stop is written")
                self.spool.remove()
        if result.value and (result.what or result.written):
            what = result.what or "runs whose lease was taken over"
            log.info("closed %d open run(s) as lost: %s", result.value, what)
        if result.error is None:
            if result.written or result.what:
                self.on_written()
        elif isinstance(result.error, SQLAlchemyError) and is_outage(result.error):
            self.on_outage(result.error)
        elif result.failed:
            log.error("history: %d write(s) kept for another try after an unexpected error: %s",
                      len(result.failed), self._describe(result.error))
        else:
            log.error("history: %s failed: %s", result.what or "a write", self._describe(
                result.error))
        dropped = self.pending.take_dropped()
        if dropped:
            log.error("%d history write(s) dropped: more than %d kept during the outage",
                      dropped, self.pending.max_items)

    # ----- failover of the database -----------------------------------------------------------
    def _remember(self, rows: list[Stamped]) -> None:
        now = self.monotonic()
        self.recent.extend((now, row) for row in rows)
        while self.recent and self.recent[0][0] < now - RESEND_WINDOW:
            self.recent.popleft()

    def resend_recent(self, usable: bool) -> None:
        """The database is another server now (a promoted standby): write again what was
        written in the last ``RESEND_WINDOW`` seconds, which it may lack."""
        self._remember([])
        rows = [row for _, row in self.recent]
        if not rows:
            return
        self.resent += len(rows)
        log.warning("history: re-sending the %d write(s) of the last %.0f s after the database"
                    " failover (the new server may not have them; none is doubled)", len(rows),
                    min(RESEND_WINDOW, self.monotonic() - self.recent[0][0]))
        self._send(rows, usable)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, SQLAlchemyError):
            return describe_db_error(exc, self.url)
        return f"{type(exc).__name__}: {exc}"

    # ----- stop ----------------------------------------------------------------------------
    def close(self, usable: bool, timeout: float) -> None:
        """Write what is queued and kept, waiting ``timeout`` seconds at most (none during
        an outage); save what is left in the spool file, and say how much."""
        self.flush(usable)
        if usable and self.pending:
            self.resume()
        reason = "the database is unavailable" if not usable else ""
        for result in self.writer.close(timeout if usable else 0.0):
            self._collected(result)
            if result.error is not None and is_outage(result.error):
                reason = self._describe(result.error)
        left = [row for job in self.writer.inflight.values() for row in job.rows]
        left += self.pending.take()
        if self.journal is not None:
            self.journal.close()
        if not left:
            return
        if not reason:
            reason = f"not written within {timeout:g} s"
        runs_left = len({_key(item)[1:] if getattr(item, "run_id", None) is not None
                         else id(item) for _, item in left})
        if self.spool is None:
            self.lost.append(f"history of {runs_left} run(s) ({len(left)} write(s)) not written"
                             f" at stop ({reason}): lost")
            log.error("%s", self.lost[-1])
            return
        try:
            self.spool.save(left, self.monotonic())
        except OSError as exc:
            self.lost.append(f"history of {runs_left} run(s) ({len(left)} write(s)) not written"
                             f" at stop ({reason}), and it cannot be kept in {self.spool.path}:"
                             f" {exc.strerror or exc}: lost")
            log.error("%s", self.lost[-1])
            return
        log.error("history of %d run(s) (%d write(s)) not written at stop (%s): kept in %s,"
                  " written at the next start", runs_left, len(left), reason, self.spool.path)

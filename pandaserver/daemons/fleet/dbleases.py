"""The master's lease calls on the shared database, and who of the fleet asks for a grant.

``DbLeases`` is the ``LeaseManager`` of a master with a fleet database (``FleetDb``): its
grants and releases run on the ``lease`` lane, renewals on the ``renew`` lane, and the two
reads that decide who asks on the ``house`` lane (the live servers, once a heartbeat
interval) and the ``look`` lane (the lease table: frequent, so never delaying a heartbeat);
the loop never waits for any of them.

Who asks (``turn``, see daemons/fleet/rank.py): the preferred server of a script asks at the
due time; a server of rank r > 0 waits until ``due + fallback_offset(r)`` and asks only if
a read of the whole lease table (one statement for every script, made at most every
``read_interval`` and only while such a check waits) taken after that moment, and at most
``FRESH`` seconds old, shows the period ungranted; when it shows a grant, the server
learns the next due time without asking. On PostgreSQL a grant heard (every grant statement
notifies, grantwatch.py) settles that look without the read, when it is newer than what
this server knew of the lease. The live servers are those whose heartbeat
(``daemon_server.last_seen``) is at most ``LIVE_BEATS`` heartbeat intervals (at least
``LIVE_MIN`` seconds) old and that do not report draining, read every heartbeat interval
(every ``SETTLE`` seconds while the list changes, as at start-up).

So a killed preferred server costs each of its scripts a fallback delay per period (the
lease's time to live first, if it died holding it) until the others stop counting it as
live, at most ``LIVE_BEATS`` heartbeat intervals later; then its scripts have a new
preferred server. Nothing here decides who may run: that stays the grant statement.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base.runs import LogRecorder, Run, RunRecord
from pandaserver.daemons.fleet import rank
from pandaserver.daemons.fleet.grantwatch import GrantWatch, Known
from pandaserver.daemons.fleet.leasemanager import AcquireReply, LeaseDecision, RenewReply, Turn
from pandaserver.daemons.fleet.rank import Read, Seen, draining, wait_from
from pandaserver.daemons.fleet.releases import Granted, Releases

if TYPE_CHECKING:
    from pandaserver.daemons.fleet.fleetdb import FleetDb

log = logging.getLogger("panda.master")

LIVE_BEATS = 3  # a server is live while its last heartbeat is at most this many intervals old
LIVE_MIN = 10.0  # ... or this many seconds (short intervals: a loaded machine beats late)
SETTLE = 2.0  # seconds between server-list reads while the list keeps changing (start-up)
POLL = 0.02  # seconds between looks while a read is under way
FRESH = 0.25  # seconds: how old a read showing a period ungranted may be to ask on it


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def _posix(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


class DbLeases:
    """``LeaseManager`` backed by ``FleetDb``."""

    def __init__(self, fleet: FleetDb) -> None:
        self.fleet = fleet
        self.live: frozenset[str] = frozenset()  # other servers seen live (not this one)
        self._ranks: dict[str, int] = {}
        self._next_servers = 0.0
        self._servers_sent = 0.0
        self._servers_busy = False
        self._read: Read | None = None
        self._read_sent: float | None = None  # a read under way since then
        self._last_sent = -1e18
        self._deferred: dict[str, tuple[float, float]] = {}  # name -> (due, look again at)
        self.reads = 0  # lease-table reads made (status, tests)
        # the held leases' clocks and the deferred releases (releases.py)
        self.releases = Releases(fleet, self.rank)
        self._looked_again: set[str] = set()  # refused past due: asked again soon, once
        self.watch = GrantWatch()  # PostgreSQL: the grants heard, and what was known before
        # grant calls that failed or were given up on (no answer in time): the database may
        # have committed one unseen, so the next grant of that lease adopts whatever this
        # master process holds of it (``adopt`` in LeaseStore.try_acquire), rather than
        # being refused by its own grant until it expires
        self.unsure: set[str] = set()
        fleet.at_close.append(lambda: self.send_releases(fleet.monotonic(), everything=True))

    @property
    def ttl(self) -> float | None:
        return self.fleet.settings.lease_ttl

    @property
    def epoch(self) -> int:
        return self.fleet.gate.epoch

    # ----- who asks -------------------------------------------------------------------------
    def rank(self, name: str) -> int:
        found = self._ranks.get(name)
        if found is None:
            found = self._ranks[name] = rank.rank(name, self.fleet.server, self.live)
        return found

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        fleet = self.fleet
        self._refresh_servers(now)
        name = spec.name
        deferred = self._deferred.pop(name, None)
        if deferred is not None and deferred[1] == due:
            due = deferred[0]  # looking again at a deferred due time: still that one
        offset = rank.fallback_offset(self.rank(name), spec.period)
        if not fleet.member or fleet.down_since is not None:
            return Turn(ask=True, due=due)  # run-once, or the database is down
        check = due + offset
        if now < check:
            return self._defer(name, due, check)
        # granted meanwhile by another server, heard (grantwatch.py): no read, no ask; the
        # preferred server looks too when it has company (late, it would only be refused)
        heard = (self.watch.look(fleet.listener, name, self.epoch, now)
                 if offset > 0 or self.live else None)
        if heard is not None:
            return Turn(ask=False, at=heard.at + heard.due_in, learned=True)
        if offset == 0:
            return Turn(ask=True, due=due)  # the preferred server asks
        read = self._read
        if read is not None and read.sent >= check:  # a read made after the check time
            seen = read.leases.get(name)
            wait = wait_from(seen)
            if seen is not None:  # a grant heard later must be newer than this
                self.watch.know(name, Known(seen.generation, read.sent, self.epoch))
            if wait is not None:
                return Turn(ask=False, at=max(read.done + wait, now + 0.001), learned=True)
            if now - read.done <= FRESH:
                return Turn(ask=True, due=due)
            # ungranted a while ago (this server was busy meanwhile): look again first
        interval = rank.read_interval(spec.period)
        if self._read_sent is None and now >= self._last_sent + interval:
            self._read_leases(now)
        if self._read_sent is None:  # not yet: the next read is allowed then
            return self._defer(name, due, max(now, self._last_sent + interval) + POLL)
        return self._defer(name, due, now + POLL)

    def _defer(self, name: str, due: float, at: float) -> Turn:
        at = max(at, self.fleet.monotonic() + 0.001)  # always later than the caller's now
        self._deferred[name] = (due, at)
        return Turn(ask=False, at=at)

    def _read_leases(self, now: float) -> None:
        fleet = self.fleet
        self._read_sent = self._last_sent = now
        self.reads += 1

        def done(rows: Any, error: BaseException | None, late: bool) -> None:
            if late:
                return
            self._read_sent = None
            if error is not None or rows is None:
                return  # an outage (FleetDb): grants are asked for, and answered, at once
            self._read = Read(sent=now, done=fleet.monotonic(), leases={
                row.name: Seen(row.held, row.due_in, row.expires_in, row.generation)
                for row in rows})

        fleet._submit("look", "lease-table read", fleet.leases.list_leases, done)

    def _refresh_servers(self, now: float) -> None:
        fleet = self.fleet
        if self._servers_busy or now < self._next_servers or not fleet.member:
            return
        interval = fleet.settings.heartbeat_interval
        self._servers_busy = True
        self._servers_sent = now
        self._next_servers = now + interval

        def done(rows: Any, error: BaseException | None, late: bool) -> None:
            if late:
                return
            self._servers_busy = False
            if error is not None or rows is None:
                return
            live = frozenset(row.server for row in rows if row.server != fleet.server
                             and row.age <= max(LIVE_BEATS * interval, LIVE_MIN)
                             and not draining(row.state))
            if live != self.live:  # servers starting together: read again soon
                self._next_servers = min(self._next_servers, fleet.monotonic() + SETTLE)
                log.info("fleet: %d other live server(s)%s; a sync script is asked for by its"
                         " preferred server first", len(live),
                         f" ({', '.join(sorted(live))})" if len(live) <= 20 else "")
                self.live = live
                self._ranks.clear()

        fleet._submit("house", "server list", fleet.beats.list_servers, done)

    # ----- grants, renewals, releases --------------------------------------------------------
    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        """Ask for ``spec``'s lease (a cron script: for its ``firing``); ``reply`` gets the
        decision on the loop thread (at once while the database is known to be down).
        ``run_id``: the run it is for, whose ``running`` row the grant writes (a fleet
        member's: run-once sends no heartbeat, so an open row of it would look dead)."""
        fleet = self.fleet
        if not fleet.usable(now):
            reply(LeaseDecision(granted=False, wait=max(fleet.next_probe - now, 0.05),
                                unavailable=True, sent=now))
            return
        gate = fleet.gate
        if gate.closed(now):  # the database failed over: old leases are not all dead yet
            reply(LeaseDecision(granted=False, wait=max(gate.remaining(now), 0.05),
                                unavailable=True, sent=now))
            return
        sent, epoch = now, gate.epoch
        ttl = fleet.settings.lease_ttl
        name = spec.name
        # this master's own finished generation of this lease, released by this statement
        finished = self.releases.take(name)
        self.watch.know(name, None)  # what the answer says, if granted
        run = run_id if fleet.member else None

        adopt = name in self.unsure

        def done(result: Any, error: BaseException | None, late: bool) -> None:
            granted = error is None and result is not None and result.granted
            if not late:
                if error is not None:
                    self.unsure.add(name)
                elif granted:
                    self.unsure.discard(name)
            self.releases.answered(name, finished, granted)
            if late:  # we gave up on it: a grant that arrived anyway is handed back
                if granted:
                    log.info("%s: a lease grant came back after the call was abandoned;"
                             " releasing generation %d", name, result.generation)
                    fleet.release(name, result.generation)
                    self._unused(name, run, result)
                return
            if error is not None:
                reply(LeaseDecision(granted=False, wait=max(fleet.probe_interval,
                                                            gate.remaining(fleet.monotonic())),
                                    unavailable=True, sent=sent))
                return
            if gate.epoch != epoch:  # granted, maybe by the server that is gone: not used
                log.warning("%s: a lease grant came back across a failover of the database;"
                            " not used", spec.name)
                if granted:
                    self._unused(name, run, result)
                reply(LeaseDecision(granted=False, wait=max(gate.remaining(fleet.monotonic()),
                                                            0.05), unavailable=True, sent=sent))
                return
            if granted:
                self.watch.know(name, Known(int(result.generation), sent, epoch))
                self.releases.granted(name, Granted(
                    int(result.generation), spec.period,
                    None if result.due_in is None else sent + result.due_in,
                    fleet.monotonic() + ttl))
            if not result.granted and result.holder not in (None, fleet.server, *self.live):
                # a server we did not know of: read the list again soon
                self._next_servers = min(self._next_servers, self._servers_sent + SETTLE)
            reply(LeaseDecision(granted=result.granted, generation=result.generation,
                                wait=self._wait(spec, result), holder=result.holder,
                                sent=sent, due_in=result.due_in,
                                db_now=_posix(result.db_now),
                                served=_posix(result.firing),
                                run_row=bool(getattr(result, "run_row", False))))

        # a cron script's lease is granted once per firing (db/stores/leases.py)
        when = after = None
        if firing is not None and spec.cron is not None:
            when, after = _utc(firing), _utc(spec.cron.next_after(firing))
        # how the finished run ended: that grant writes it too (db/stores/grantrun.py)
        ended = None if finished is None else fleet.keeper.ended_under(name, finished)
        fleet._submit("lease", "lease", lambda: fleet.leases.try_acquire(
            name, fleet.server, fleet.pid, spec.period, ttl, when, after,
            token=fleet.holder.token, finished=finished, run_id=run, adopt=adopt,
            ended=None if ended is None else ended.later(fleet.monotonic() - sent)), done)

    def _unused(self, name: str, run: int | None, result: Any) -> None:
        """A grant this master does not use (it came back too late, or across a failover):
        the ``running`` row it wrote for run ``run`` goes."""
        if run is not None and getattr(result, "run_row", False):
            self.not_run(name, int(result.generation), run)

    def not_run(self, name: str, generation: int, run_id: int) -> None:
        """The run a grant wrote a row for never started: no run, no row (as a refusal).
        Removed by the history writer, in order with its writes; should that fail, the row
        is closed as ``lost`` by this master's next start of the script (or the sweep)."""
        self.fleet.keeper.not_run(name, generation, run_id)

    def renew(self, held: list[tuple[str, int]], now: float, reply: RenewReply) -> None:
        """Renew every held lease in one call; ``reply(renewed names or None, sent)``."""
        sent = now
        ttl = self.fleet.settings.lease_ttl
        gate = self.fleet.gate
        epoch = gate.epoch
        if gate.closed(now):  # held across a failover: refused, so fenced at once
            reply(set(), now)
            return

        def done(result: Any, error: BaseException | None, late: bool) -> None:
            if error is None and result is not None:
                expires = self.fleet.monotonic() + ttl  # renewed by then at the latest
                self.releases.renewed(held, result, expires)
            if late:
                return  # too late to count: the master fenced on its own clock meanwhile
            if gate.epoch != epoch:  # the database failed over meanwhile: not ours any more
                reply(set(), sent)
                return
            reply(None if error is not None else set(result), sent)

        self.fleet._submit("renew", "lease renewal",
                           lambda: self.fleet.leases.renew_many(list(held), ttl,
                                                                self.fleet.holder), done)

    def _wait(self, spec: DaemonSpec, result: Any) -> float:
        """How long a refused asker waits. A lease held past its due time may be a finished
        run whose holder defers its release (below) and sends it within half of rank 1's
        fallback offset: so the first such refusal asks again one offset later, not at the
        lease's expiry; a second one is an overrun, and waits as the database says."""
        name = spec.name
        if result.granted or not result.held_past_due:
            self._looked_again.discard(name)
            return float(result.wait)
        if name in self._looked_again or result.holder == self.fleet.server:
            return float(result.wait)
        self._looked_again.add(name)
        return min(float(result.wait), max(rank.fallback_offset(1, spec.period), POLL))

    # ----- releases: deferred, and folded into the next grant (``Releases``) ------------------
    def release(self, name: str, generation: int | None) -> None:
        """A run under ``name``'s lease ended: release it, now or by folding
        (``Releases.release``)."""
        self.releases.release(name, generation)

    def next_release(self) -> float | None:
        """When ``send_releases`` has a deferred release to send (monotonic)."""
        return self.releases.next_release()

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        """Release in one statement the deferred leases due by ``now`` (``Releases``)."""
        self.releases.send_releases(now, everything, only)


class DbRecorder:
    """``Recorder`` that logs each run and writes it to the history table."""

    def __init__(self, fleet: FleetDb) -> None:
        self.fleet = fleet
        self.log = LogRecorder()

    def start(self, run: Run) -> None:
        self.fleet.record_start(run)

    def record(self, record: RunRecord) -> None:
        self.fleet.record(record)  # journaled first: a run logged as ended has its end kept
        self.log.record(record)

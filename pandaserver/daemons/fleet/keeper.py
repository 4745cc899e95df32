"""The master's held leases: renewed in time, and fenced when they cannot be.

One ``LeaseKeeper`` per master, used only on its loop thread. Each sync run in progress has
a ``LeaseClock``; all held leases are renewed together by one call (on the database's
``renew`` lane) whenever the oldest confirmation is ``ttl/3`` old. A renewal that fails is
retried every ``RENEW_RETRY`` seconds; a lease the database says is no longer ours
(expired and taken, or force-released) is fenced at once, and so is every lease held when
the database fails over to another server (the lease store's ``epoch`` changed:
daemons/fleet/failover.py). ``due_fences`` names the runs the
master must kill now; ``moved`` the runs whose hard deadline changed (the master passes it
to their worker). See ``fencing.py`` for the arithmetic.
"""

from __future__ import annotations

import logging

from pandaserver.daemons.fleet.fencing import RENEW_RETRY, LeaseClock
from pandaserver.daemons.fleet.leasemanager import LeaseManager

log = logging.getLogger("panda.master")


class LeaseKeeper:
    def __init__(self, leases: LeaseManager, kill_grace: float) -> None:
        self.leases = leases
        self.kill_grace = kill_grace
        self.held: dict[int, LeaseClock] = {}  # by run id
        self.lost: set[int] = set()  # the database says it is no longer ours
        self.moved: set[int] = set()
        self.renewing = False
        self.retry_at = 0.0
        self.failures = 0

    def hold(self, run_id: int, name: str, generation: int, sent: float) -> LeaseClock | None:
        """A grant was sent at ``sent``; None when leases never expire (one server)."""
        ttl = self.leases.ttl
        if ttl is None:
            return None
        clock = LeaseClock(name, generation, sent, ttl, epoch=self.leases.epoch)
        self.held[run_id] = clock
        return clock

    def drop(self, run_id: int) -> None:
        self.held.pop(run_id, None)
        self.lost.discard(run_id)
        self.moved.discard(run_id)

    def fenced(self, run_id: int) -> None:
        clock = self.held.get(run_id)
        if clock is not None:
            clock.fenced = True

    # ----- renewals -----------------------------------------------------------------------
    def _failed_over(self) -> None:
        """Leases granted before the database became another server are lost."""
        epoch = self.leases.epoch
        for run_id, clock in self.held.items():
            if clock.epoch != epoch and run_id not in self.lost and not clock.fenced:
                log.error("%s: lease generation %d was granted by the database server before"
                          " its failover, and may not exist on the new one: fencing its run",
                          clock.name, clock.generation)
                self.lost.add(run_id)

    def _live(self) -> list[tuple[int, LeaseClock]]:
        self._failed_over()
        return [(rid, c) for rid, c in self.held.items() if not c.fenced and rid not in self.lost]

    def tick(self, now: float) -> None:
        """Send a renewal of every live lease when the oldest is due (one call in flight),
        and the deferred releases that are due."""
        self.leases.send_releases(now)
        live = self._live()
        if self.renewing or not live or now < self.retry_at:
            return
        if min(clock.renew for _, clock in live) > now:
            return
        self.renewing = True
        held = {rid: (clock.name, clock.generation) for rid, clock in live}
        self.leases.renew(sorted(set(held.values())), now,
                          lambda names, sent: self._renewed(held, names, sent))

    def _renewed(self, asked: dict[int, tuple[str, int]], names: set[str] | None,
                 sent: float) -> None:
        self.renewing = False
        if names is None:
            self.failures += 1
            self.retry_at = sent + RENEW_RETRY
            log.warning("lease renewal failed (%d in a row); running sync scripts are fenced"
                        " if no renewal is confirmed in time", self.failures)
            return
        self.failures = 0
        self._failed_over()
        for run_id, (name, generation) in asked.items():
            clock = self.held.get(run_id)
            if clock is None or clock.generation != generation or run_id in self.lost:
                continue  # the run ended meanwhile, or was lost to a failover
            if name in names:
                clock.confirm(sent)
                self.moved.add(run_id)
            else:
                log.error("%s: lease generation %d is no longer ours (expired and taken, or"
                          " force-released): fencing its run", name, generation)
                self.lost.add(run_id)

    # ----- fencing ------------------------------------------------------------------------
    def due_fences(self, now: float) -> list[int]:
        """Runs to kill now: their lease was lost, or cannot be confirmed before it expires."""
        self._failed_over()
        return [rid for rid, clock in self.held.items() if not clock.fenced
                and (rid in self.lost or now >= clock.fence(self.kill_grace))]

    def next_event(self, now: float) -> float | None:
        times = []
        live = self._live()
        if live and not self.renewing:
            times.append(max(self.retry_at, min(clock.renew for _, clock in live)))
        times += [clock.fence(self.kill_grace) for _, clock in live]
        if any(not self.held[rid].fenced for rid in self.lost if rid in self.held):
            times.append(now)  # to be fenced on the next turn (once fenced, nothing to do)
        release = self.leases.next_release()
        if release is not None:
            times.append(release)
        return min(times) if times else None

"""The leases the running scripts hold, seen from their workers: when a renewal is
confirmed, the deadline each worker holds moves with it; when a lease cannot be confirmed
before it may expire, its run is killed (self-fencing, docs/scheduling.md) and what the
run left is hurried to its end. The ``LeaseKeeper`` (daemons/fleet/keeper.py) decides
which leases are due to be fenced; this acts on the pool's workers. Loop thread only."""

from __future__ import annotations

import logging

from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.fleet.keeper import LeaseKeeper
from pandaserver.daemons.master.pool import RunContainment
from pandaserver.daemons.master.workers import WorkerPool

log = logging.getLogger("panda.master")


class RunFences:
    def __init__(self, keeper: LeaseKeeper, pool: WorkerPool,
                 containment: RunContainment) -> None:
        self.keeper = keeper
        self.pool = pool
        self.containment = containment

    def pass_deadlines(self) -> None:
        """Renewals confirmed: move the deadlines the workers hold."""
        if not self.keeper.moved:
            return
        moved, self.keeper.moved = self.keeper.moved, set()
        for slot in self.pool.slots.values():
            if slot.run is not None and slot.run.id in moved:
                lease = self.keeper.held.get(slot.run.id)
                if lease is not None and not lease.fenced:
                    slot.send_deadline(lease.hard)

    def fence(self, now: float) -> None:
        """Kill runs whose lease cannot be confirmed before it may expire (self-fencing)."""
        fences = set(self.keeper.due_fences(now))
        if not fences:
            return
        for slot in self.pool.with_runs():
            run = slot.run
            if run is None or run.id not in fences:
                continue
            self.keeper.fenced(run.id)
            run.fenced = True
            lease = self.keeper.held.get(run.id)
            why = ("its lease is no longer ours" if run.id in self.keeper.lost else
                   f"its lease could not be renewed (last confirmed {now - lease.sent:.1f} s ago,"
                   f" lease_ttl {lease.ttl:g} s)" if lease is not None else "lease lost")
            run.notes.append(f"fenced: {why}")
            log.error("%s fenced: %s; killing its processes before the lease can expire",
                      run.label, why)
            slot.start_kill(now, f"{run.label} fenced", grace=KILL_GRACE)
        for run_id in fences:  # its worker gone: what it left must die now, not after a grace
            self.keeper.fenced(run_id)
            self.containment.hurry(run_id)

"""A refused lease, as the dispatcher handles it: when the script asks again, what is
counted, what is said.

A refusal (another server holds the lease, or it is not due fleet-wide yet) or no answer
(the database is unavailable) puts the script back on the timetable for when the database
says it is due, and at least once a period; a cron script moves on to the firing after the
one the fleet served. Refusals are counted in memory per script (``Contentions``, for the
status file), never written to the history (the lease row counts them fleet-wide). A
run-once master cannot run its script then: ``refused`` says so, and the dispatcher stops.
"""

from __future__ import annotations

import logging

from pandaserver.daemons.fleet.contention import Contentions
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.timetable import Timetable

log = logging.getLogger("panda.master")

MIN_LEASE_RETRY = 0.05


class Refusals:
    """The dispatcher's refused lease attempts: the script's next try, the count, the log."""

    def __init__(self, scripts: Timetable, only: str | None) -> None:
        self.scripts = scripts
        self.only = only
        self.contention = Contentions()  # refused lease attempts here, per sync script

    def refused(self, state: ScriptState, decision: LeaseDecision, now: float) -> bool:
        """``state``'s lease was not granted: back on the timetable, counted and said. True
        when a run-once master cannot run it now (it stops: nothing was run)."""
        spec = state.spec
        # Ask again when the database says it is due, and at least once a period: a
        # holder that stops cleanly releases early, and its lease must not leave a gap.
        retry = min(decision.wait, spec.period)
        next_due = max(state.next_due, now + max(retry, MIN_LEASE_RETRY))
        firing = state.firing
        if spec.cron is not None and firing is not None:  # served: the next one
            firing = schedule.firing_after_refusal(spec.cron, firing, decision.served)
            next_due = max(next_due, self.scripts.due_of(state, firing))
        self.scripts.answered(state, next_due, firing)
        return self.note(state, decision, now)

    def note(self, state: ScriptState, decision: LeaseDecision, now: float) -> bool:
        """Another server holds the lease or it is not due fleet-wide yet (we try again
        when it is): counted in memory for the status file, never a history row (the lease
        row counts refusals fleet-wide); or the database is down (the fleet logs that once).
        True when a run-once master cannot run it now."""
        name = state.spec.name
        if decision.unavailable:
            log.debug("%s skipped: no lease while the database is unavailable", name)
        elif self.contention.note(name, decision.holder, now):
            log.info("%s: lease held by %s; not run here (refusals are counted in"
                     " panda-daemon status and on the lease row)", name, decision.holder)
        elif decision.holder is None:
            log.debug("%s not due fleet-wide for %.3f s", name, decision.wait)
        if self.only is not None:
            why = (f"its lease is held by {decision.holder}" if decision.holder else
                   "the database is unavailable" if decision.unavailable else
                   f"it is not due fleet-wide for another {decision.wait:.0f} s")
            log.error("%s cannot run now: %s (--ignore-lease runs it without the lease)",
                      state.spec.name, why)
            return True
        return False

"""The master's scheduling: which due script goes to which idle worker, the lease a sync
script asks for first (the answer arrives later; nothing waits for it), the run's hand-over
with its lease deadline, and each run's outcome."""

from __future__ import annotations

import functools
import logging
import math
import os
from datetime import timedelta

from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import encode_deadline
from pandaserver.daemons.base.runs import Run, RunRecord
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.core import MasterCore
from pandaserver.daemons.master.pool import Slot
from pandaserver.daemons.master.schedule import REMOVED, ScriptState

log = logging.getLogger("panda.master")

MIN_LEASE_RETRY = 0.05


class Dispatching(MasterCore):
    def _dispatch(self, now: float) -> None:
        idle = sorted((s for s in self.slots.values() if s.state is WorkerState.IDLE
                       and s.conn_open and s.reserved is None), key=lambda s: s.index)
        if not idle:
            return
        # due-time heap: the cost per dispatch does not grow with the number of scripts
        while idle and (state := self.scripts.pop_due(now)) is not None:
            if not self._may_start(state, now):  # paused, draining, backed off (control.py)
                self._hold_back(state)
                continue
            if not state.spec.sync:
                if self._hand_over(idle, state, None, None) is None:
                    self.scripts.requeue(state)
                    break  # every idle worker's channel was broken
                continue
            if self.only is None and state.spec.name not in self.run_now:
                # in a fleet, the script's preferred server asks; the others look later
                # whether it was granted, and ask only if not (daemons/fleet/rank.py); an
                # operator's run-now is asked for at once by the server that claimed it
                turn = self.leases.turn(state.spec, state.next_due, now)
                if not turn.ask:  # back in the heap until then (learned: its next due)
                    state.next_due = turn.at  # later than now
                    continue
                state.next_due = turn.due  # the due time, not the moment of the last look
            # a sync script asks for its lease; a worker is kept for it meanwhile, and
            # nothing else waits for the answer
            slot = idle.pop(0)
            slot.reserved = state.spec.name
            state.acquiring = True
            self.leases.acquire(state.spec, now, functools.partial(self._lease_reply, state, slot))

    def _lease_reply(self, state: ScriptState, slot: Slot, decision: LeaseDecision) -> None:
        """The database answered a grant (on the loop thread, maybe much later)."""
        now = self.clock.monotonic()
        state.acquiring = False
        if slot.reserved == state.spec.name:
            slot.reserved = None
        spec = state.spec
        if not decision.granted:
            # Ask again when the database says it is due, and at least once a period: a
            # holder that stops cleanly releases early, and its lease must not leave a gap.
            retry = min(decision.wait, spec.period)
            state.next_due = max(state.next_due, now + max(retry, MIN_LEASE_RETRY))
            self._lease_refused(state, decision, now)
            return
        usable = self.scripts.get(spec.name) is state and state.disabled is None \
            and not self.stopping
        candidates = [slot] if slot.index in self.slots and self.slots[slot.index] is slot \
            and slot.state is WorkerState.IDLE and slot.conn_open else []
        candidates += sorted((s for s in self.slots.values() if s is not slot
                              and s.state is WorkerState.IDLE and s.conn_open
                              and s.reserved is None), key=lambda s: s.index)
        if not usable or not candidates or \
                self._hand_over(candidates, state, decision.generation, decision.sent,
                                None if decision.due_in is None else now + decision.due_in) \
                is None:
            log.info("%s: lease generation %s granted but not used (%s); releasing it",
                     spec.name, decision.generation,
                     "stopping" if self.stopping else "no worker free" if usable else
                     "removed or disabled meanwhile")
            self.leases.release(spec.name, decision.generation)

    def _hand_over(self, idle: list[Slot], state: ScriptState, generation: int | None,
                   lease_sent: float | None, fleet_due: float | None = None) -> Slot | None:
        """Send the run to the first idle worker that takes it; a worker whose channel is
        broken is killed (and replaced) rather than tried again."""
        spec = state.spec
        while idle:
            slot = idle.pop(0)
            now = self.clock.monotonic()  # fresh: the run's timeout counts from here
            self.run_counter += 1
            run = Run(id=self.run_counter, script=spec.name, worker=slot.index, pid=slot.pid,
                      due=state.next_due, dispatched=now, timeout_at=now + spec.timeout,
                      generation=generation)
            lease = None
            if generation is not None and lease_sent is not None:
                lease = self.keeper.hold(run.id, spec.name, generation, lease_sent)
            # the worker knows the lease's deadline before it starts the run
            self._send_deadline(slot, lease.hard if lease is not None else None)
            if slot.send("run", run=run.id, name=spec.name, module=spec.module,
                         arguments=list(spec.arguments), loop=spec.loop, period=spec.period,
                         generation=generation):
                slot.move(WorkerState.BUSY)
                self._dispatched(spec.name)
                slot.run = run
                self.recorder.start(run)  # its history row, written by the batched writer
                state.running = run.id
                state.run_started = now
                if self.only is not None:
                    state.next_due = math.inf
                elif generation is not None:
                    # the fleet-wide due time the grant just set (this grant + period, by
                    # the database clock; ``fleet_due`` when the database said when)
                    state.next_due = fleet_due if fleet_due is not None else now + spec.period
                else:
                    state.next_due = schedule.next_due_after_dispatch(state, now)
                state.anchored = True
                log.debug("%s dispatched to worker %d (due %.3f s ago)", run.label, slot.index,
                          now - run.due)
                return slot
            self.keeper.drop(run.id)
            slot.start_kill(now, "its channel to the master is broken", grace=0)
        return None

    def _send_deadline(self, slot: Slot, deadline: float | None) -> None:
        """Tell a worker its run's hard lease deadline (None: no deadline); never blocks."""
        if slot.exited:
            return
        try:
            os.write(slot.proc.lifeline, encode_deadline(deadline))
        except (BlockingIOError, OSError) as exc:  # a full pipe: the worker is frozen
            log.warning("worker %d (pid %d): cannot pass its lease deadline: %s",
                        slot.index, slot.pid, exc)

    def _pass_deadlines(self) -> None:
        """Renewals confirmed: move the deadlines the workers hold."""
        if not self.keeper.moved:
            return
        moved, self.keeper.moved = self.keeper.moved, set()
        for slot in self.slots.values():
            if slot.run is not None and slot.run.id in moved:
                lease = self.keeper.held.get(slot.run.id)
                if lease is not None and not lease.fenced:
                    self._send_deadline(slot, lease.hard)

    def _lease_refused(self, state: ScriptState, decision: LeaseDecision, now: float) -> None:
        """Another server holds the lease or it is not due fleet-wide yet (we try again
        when it is): counted in memory for the status file, never a history row (the lease
        row counts refusals fleet-wide); or the database is down (the fleet logs that once)."""
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
            self.once_outcome = protocol.SKIPPED
            self.begin_stop(now, grace=0)

    def _warn_late(self, now: float) -> None:
        busy = all(s.state is not WorkerState.IDLE for s in self.slots.values())
        for state in self.scripts.late_to_warn(now):
            state.late_warned_for = state.next_due
            why = ("its previous run is still going" if state.running is not None
                   else f"all {self.n_proc} workers are busy" if busy else "waiting for a worker")
            due = self.clock.wall() - timedelta(seconds=now - state.next_due)
            log.warning("%s is %.0f s late (due at %s UTC): %s", state.spec.name,
                        now - state.next_due, f"{due:%Y-%m-%d %H:%M:%S}", why)

    def _finish_run(self, run: Run, outcome: str, error: str | None,
                    contained: bool = False) -> None:
        if not contained:  # end what the run left first: the run is over once that is gone,
            # and its lease, renewed meanwhile, is released only then
            lease = self.keeper.held.get(run.id)
            self.containment.end_run(run, lambda: self._finish_run(run, outcome, error, True),
                                     deadline=lease.hard if lease is not None else None)
            return
        started = run.started if run.started is not None else run.dispatched
        ended = run.ended if run.ended is not None else self.clock.monotonic()
        state = self.scripts.get(run.script)
        if state is not None and state.running == run.id:
            state.running = None
            over = schedule.overrun(started, ended, state.spec.period)
            if over > 0 and outcome != protocol.TIMEOUT:
                log.warning("%s took %.1f s, %.1f s longer than its period of %g s;"
                            " the next run starts now, not in a burst", run.label,
                            ended - started, over, state.spec.period)
            if state.disabled == REMOVED:  # dropped by a reload while it ran
                del self.scripts[run.script]
        self.keeper.drop(run.id)
        if run.crash is not None or outcome in (protocol.OK, protocol.FAILED):
            self._note_outcome(run.script, run.crash, ended)
        if run.generation is not None:  # whatever the config says now: what was taken
            self.leases.release(run.script, run.generation)
        self.last_outcomes[run.script] = (outcome, ended)
        self.recorder.record(RunRecord(
            script=run.script, server=self.server, pid=run.pid, run_id=run.id,
            generation=run.generation, outcome=outcome, error=error,
            duration=max(0.0, ended - started),
            dispatch_delay=started - run.due,  # negative would mean early: never
            queued=run.dispatched - run.due, ended=ended))
        if self.only is not None:
            self.once_outcome = outcome
            if not self.stopping:
                self.begin_stop(self.clock.monotonic())

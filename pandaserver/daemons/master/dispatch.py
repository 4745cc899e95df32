"""The master's dispatcher: which due script goes to which idle worker, the lease a sync
script asks for first (the answer arrives later; nothing waits for it), the run's hand-over
with its lease deadline, the renewals and fencing of the leases its runs hold (acted on
the workers by ``RunFences``, fences.py), and each run's outcome.

It owns the timetable (the scripts and their scheduling state: it is their one writer,
with the reload), the leases its runs hold (``LeaseKeeper``), the run counter, the last
outcomes, the refusals counted here (``Refusals``, refusals.py) and the scripts disabled
because a worker could not import them. It asks the operator controls (its ``Gate``)
whether a due script may start, takes idle workers from the pool, and hears from the pool
when a run is over (``PoolEvents``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Protocol

from pandaserver.config.cronspec import firing_text
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.clock import Clock
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.runs import Recorder, Run, RunRecord
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.fleet.keeper import LeaseKeeper
from pandaserver.daemons.fleet.leasemanager import LeaseDecision, LeaseManager, LocalLeases
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.fences import RunFences
from pandaserver.daemons.master.firingnotes import FiringNotes
from pandaserver.daemons.master.pool import RunContainment, Slot
from pandaserver.daemons.master.refusals import Refusals
from pandaserver.daemons.master.schedule import REMOVED, ScriptState
from pandaserver.daemons.master.timetable import Timetable
from pandaserver.daemons.master.workers import WorkerPool

log = logging.getLogger("panda.master")


class Gate(Protocol):
    """What the dispatcher asks of the operator's controls."""

    def may_start(self, state: ScriptState, now: float) -> bool:
        """Not paused, not draining (sync scripts), not backed off; or asked to run now."""

    def asked_now(self, name: str) -> bool:
        """An operator's run-now is pending for ``name``."""

    def dispatched(self, name: str) -> None: ...

    def note_outcome(self, name: str, crashed: str | None, now: float) -> None:
        """After every run: ``crashed`` says why it was a crash (None: a clean run)."""


class Dispatcher:
    def __init__(self, *, clock: Clock, scripts: Timetable, pool: WorkerPool, gate: Gate,
                 leases: LeaseManager, recorder: Recorder, containment: RunContainment,
                 server: str, only: str | None,
                 stop: Callable[[float, float | None], None]) -> None:
        self.clock = clock
        self.scripts = scripts
        self.pool = pool
        self.gate = gate
        self.leases = leases
        # a sync cron script catches up a firing the fleet missed only where a lease row
        # remembers what was served (not for a master without a shared database)
        scripts.catch_up = not isinstance(leases, LocalLeases)
        self.fences = RunFences(LeaseKeeper(leases, KILL_GRACE), pool, containment)
        self.keeper = self.fences.keeper
        self.recorder = recorder
        self.containment = containment
        self.server = server
        self.only = only
        self.stop = stop  # the master's stop (run-once ends after its run)
        self.run_counter = 0
        self.firings: FiringNotes | None = None
        self.once_outcome: str | None = None
        self.last_outcomes: dict[str, tuple[str, float]] = {}
        self.refusals = Refusals(scripts, only)  # refused lease attempts (refusals.py)
        self.unimportable: set[str] = set()  # disabled: a worker could not import them
        self.held_back: dict[str, ScriptState] = {}  # due, taken off the timetable

    def read_clocks(self) -> None:
        """Give the timetable the wall clock's offset from the monotonic clock (cron firings
        are wall-clock times; a step moves them with it: ``Timetable.rebase``)."""
        wall = self.clock.wall().timestamp()
        self.scripts.rebase(wall - self.clock.monotonic())

    # ----- due scripts to idle workers ------------------------------------------------------
    def dispatch(self, now: float) -> None:
        idle = self.pool.idle()
        if not idle:
            return
        if self.scripts.has_cron:
            self.read_clocks()
        # due-time heap: the cost per dispatch does not grow with the number of scripts
        while idle and (state := self.scripts.pop_due(now)) is not None:
            if not self.gate.may_start(state, now):  # paused, draining, backed off
                self.held_back[state.spec.name] = state  # off the timetable until it may
                continue
            if not state.spec.sync:
                if self._hand_over(idle, state, None, None) is None:
                    self.scripts.requeue(state)
                    break  # every idle worker's channel was broken
                continue
            due = state.next_due
            if self.only is None and not self.gate.asked_now(state.spec.name):
                # in a fleet, the script's preferred server asks; the others look later
                # whether it was granted, and ask only if not (daemons/fleet/rank.py); an
                # operator's run-now is asked for at once by the server that claimed it
                turn = self.leases.turn(state.spec, state.next_due, now)
                if not turn.ask:  # back in the heap until then (learned: its next due; a
                    # cron script then asks for the latest firing: firing_to_ask)
                    self.scripts.set_due(state, turn.at)  # later than now
                    continue
                due = turn.due  # the due time, not the moment of the last look
            # a sync script asks for its lease; a worker is kept for it meanwhile, and
            # nothing else waits for the answer
            slot = idle.pop(0)
            slot.reserved = state.spec.name
            # a cron script asks for a firing; an operator's run-now for none (the claim
            # made its lease due: it serves no firing, the next still runs)
            firing = None
            if state.spec.cron is not None and state.firing is not None \
                    and not self.gate.asked_now(state.spec.name):
                firing = schedule.firing_to_ask(state.spec.cron, state.firing,
                                                self.scripts.wall_of(state, now))
            self.scripts.asking(state, due, firing)
            # the run's number, taken now: the grant writes the run's history row under it
            self.run_counter += 1
            run_id = self.run_counter
            self.leases.acquire(state.spec, now,
                                functools.partial(self._lease_reply, state, slot, firing,
                                                  run_id),
                                firing=firing, run_id=run_id)

    def _lease_reply(self, state: ScriptState, slot: Slot, firing: float | None,
                     run_id: int, decision: LeaseDecision) -> None:
        """The database answered a grant (on the loop thread, maybe much later) for the
        run numbered ``run_id``."""
        now = self.clock.monotonic()
        if slot.reserved == state.spec.name:
            slot.reserved = None
        spec = state.spec
        if decision.db_now is not None:  # a cron lease's answer: the database's clock
            self.scripts.learn_skew(decision.db_now, (decision.sent + now) / 2)
        if not decision.granted:
            if not decision.unavailable and run_id == self.run_counter:
                self.run_counter -= 1  # refused: no row has the number, the next run takes it
            if self.refusals.refused(state, decision, now):  # run-once: nothing to run
                self.once_outcome = protocol.SKIPPED
                self.stop(now, 0)
            return
        self.scripts.answered(state)
        stopping = self.pool.stopping
        usable = self.scripts.get(spec.name) is state and state.disabled is None \
            and not stopping
        candidates = [slot] if self.pool.holds(slot) and slot.state is WorkerState.IDLE \
            and slot.conn_open else []
        candidates += [s for s in self.pool.idle() if s is not slot]
        if not usable or not candidates or \
                self._hand_over(candidates, state, decision.generation, decision.sent,
                                None if decision.due_in is None else now + decision.due_in,
                                firing, run_id) is None:
            why = ("stopping" if stopping else "no worker free" if usable else
                   "removed or disabled meanwhile")
            log.info("%s: lease generation %s granted but not used (%s); releasing it",
                     spec.name, decision.generation, why)
            self.leases.release(spec.name, decision.generation)
            if decision.run_row and decision.generation is not None:  # no run: no row
                self.leases.not_run(spec.name, decision.generation, run_id)

    def _hand_over(self, idle: list[Slot], state: ScriptState, generation: int | None,
                   lease_sent: float | None, fleet_due: float | None = None,
                   granted_firing: float | None = None,
                   run_id: int | None = None) -> Slot | None:
        """Send the run to the first idle worker that takes it; a worker whose channel is
        broken is killed (and replaced) rather than tried again. ``granted_firing``: the
        cron firing the lease was granted for (None: no lease, or a run-now's); ``run_id``:
        the run's number, taken when its lease was asked for (None: a new one)."""
        spec = state.spec
        while idle:
            slot = idle.pop(0)
            now = self.clock.monotonic()  # fresh: the run's timeout counts from here
            if run_id is None:
                self.run_counter += 1
                run_id = self.run_counter
            run = Run(id=run_id, script=spec.name, worker=slot.index, pid=slot.pid,
                      due=state.next_due, dispatched=now, timeout_at=now + spec.timeout,
                      generation=generation)
            lease = None
            if generation is not None and lease_sent is not None:
                lease = self.keeper.hold(run.id, spec.name, generation, lease_sent)
            # the worker knows the lease's deadline before it starts the run
            slot.send_deadline(lease.hard if lease is not None else None)
            if slot.send("run", run=run.id, name=spec.name, module=spec.module,
                         arguments=list(spec.arguments), loop=spec.loop, period=spec.period,
                         generation=generation):
                slot.move(WorkerState.BUSY)
                self.gate.dispatched(spec.name)
                slot.run = run
                self.recorder.start(run)  # its history row, written by the batched writer
                firing = None if spec.cron is None else schedule.next_firing_after_start(
                    spec.cron, state.firing, self.scripts.wall_of(state, now), granted_firing)
                if self.only is not None:
                    next_due = math.inf
                elif spec.cron is not None and granted_firing is None and firing is not None:
                    next_due = self.scripts.due_of(state, firing)  # not the lease's period
                elif generation is not None:
                    # the fleet-wide due time the grant just set (this grant + period, or
                    # the next firing, by the database clock; ``fleet_due`` when the
                    # database said when)
                    next_due = fleet_due if fleet_due is not None else \
                        self.scripts.due_of(state, firing) if firing is not None else \
                        now + spec.period
                elif firing is not None:
                    next_due = self.scripts.due_of(state, firing)
                else:
                    next_due = schedule.next_due_after_dispatch(state, now)
                self.scripts.started(state, run.id, now, next_due, firing)
                if firing is not None and self.firings is not None:  # written at once
                    self.firings.waiting(spec, firing)
                log.debug("%s dispatched to worker %d (due %.3f s ago)", run.label, slot.index,
                          now - run.due)
                return slot
            self.keeper.drop(run.id)
            slot.start_kill(now, "its channel to the master is broken", grace=0)
        return None

    def release_held(self, now: float) -> float | None:
        """Put back on the timetable the held-back scripts that may start now (a timer of
        the loop: ``now`` when one was, so that the loop dispatches it next)."""
        if not self.held_back:
            return None
        released = False
        for name, state in list(self.held_back.items()):
            if self.scripts.get(name) is not state:  # removed or replaced by a reload
                del self.held_back[name]
            elif self.gate.may_start(state, now):
                del self.held_back[name]
                self.scripts.requeue(state)
                released = True
        return now if released else None

    def next_event(self, now: float, times: list[float]) -> None:
        """Add to ``times`` when a script is next due (none while stopping) and when a held
        lease must be renewed or fenced."""
        if not self.pool.stopping:
            nxt = self.scripts.next_wakeup(now)
            if nxt is not None:
                times.append(nxt)
            if self.scripts.any_due(now) and self.pool.idle():
                # it fell due during this turn, after ``dispatch`` looked: a busy worker
                # would wake the loop when it is free, an idle one never will
                times.append(now)
        when = self.keeper.next_event(now)
        if when is not None:
            times.append(when)

    # ----- the leases runs hold -------------------------------------------------------------
    def renew(self, now: float) -> None:
        """Send the renewal of the held leases when it is due."""
        self.keeper.tick(now)

    def pass_deadlines(self) -> None:
        """Renewals confirmed: move the deadlines the workers hold."""
        self.fences.pass_deadlines()

    def fence(self, now: float) -> None:
        """Kill runs whose lease cannot be confirmed before it may expire (self-fencing)."""
        self.fences.fence(now)

    def warn_late(self, now: float) -> None:
        late = self.scripts.late_to_warn(now)
        if not late:
            return
        busy = self.pool.all_busy()
        for state in late:
            why = ("its previous run is still going" if state.running is not None
                   else f"all {self.pool.n_proc} workers are busy" if busy else "waiting for a worker")
            due = self.clock.wall() - timedelta(seconds=now - state.next_due)
            cron = state.spec.cron
            when = f"{due:%Y-%m-%d %H:%M:%S} UTC" if cron is None or state.firing is None \
                else f"its firing of {firing_text(state.firing, cron.zone)}"
            log.warning("%s is %.0f s late (due at %s): %s", state.spec.name,
                        now - state.next_due, when, why)

    # ----- what the pool tells ----------------------------------------------------------------
    def run_over(self, run: Run, outcome: str, error: str | None,
                 contained: bool = False) -> None:
        if not contained:  # end what the run left first: the run is over once that is gone,
            # and its lease, renewed meanwhile, is released only then
            lease = self.keeper.held.get(run.id)
            self.containment.end_run(run, lambda: self.run_over(run, outcome, error, True),
                                     deadline=lease.hard if lease is not None else None)
            return
        started = run.started if run.started is not None else run.dispatched
        ended = run.ended if run.ended is not None else self.clock.monotonic()
        state = self.scripts.get(run.script)
        if state is not None and state.running == run.id:
            self.scripts.finished(state)
            over = schedule.overrun(started, ended, state.spec.period)
            if over > 0 and outcome != protocol.TIMEOUT:
                log.warning("%s took %.1f s, %.1f s longer than its period of %g s;"
                            " the next run starts now, not in a burst", run.label,
                            ended - started, over, state.spec.period)
            if state.disabled == REMOVED:  # dropped by a reload while it ran
                del self.scripts[run.script]
        self.keeper.drop(run.id)
        if run.crash is not None or outcome in (protocol.OK, protocol.FAILED):
            self.gate.note_outcome(run.script, run.crash, ended)
        self.last_outcomes[run.script] = (outcome, ended)
        self.recorder.record(RunRecord(
            script=run.script, server=self.server, pid=run.pid, run_id=run.id,
            generation=run.generation, outcome=outcome, error=error,
            duration=max(0.0, ended - started),
            dispatch_delay=started - run.due,  # negative would mean early: never
            queued=run.dispatched - run.due, ended=ended))
        if run.generation is not None:  # whatever the config says now: what was taken
            # after the record: the statement that releases it may write the run's end
            self.leases.release(run.script, run.generation)
        if self.only is not None:
            self.once_outcome = outcome
            if not self.pool.stopping:
                self.stop(self.clock.monotonic(), None)

    def imports_reported(self, errors: dict[str, str]) -> None:
        """Each worker reports which modules it could not import: a script is scheduled
        again as soon as a worker imports its module (say, after a fix and a recycle)."""
        for state in self.scripts.values():
            error = errors.get(state.spec.module)
            if error is not None and state.disabled is None:
                self.scripts.disable(state, error)
                self.unimportable.add(state.spec.name)
                log.error("script %s will not run: %s", state.spec.name, error)
                if self.only is not None:
                    self.once_outcome = protocol.FAILED
                    self.stop(self.clock.monotonic(), 0)
            elif error is None and state.spec.name in self.unimportable:
                self.unimportable.discard(state.spec.name)
                self.scripts.enable(state)
                log.info("script %s imports now: scheduled again", state.spec.name)

    def import_crashed(self, module: str, why: str, now: float) -> None:
        """A starting worker died importing ``module``: a crash of each script of it."""
        for name, state in self.scripts.items():
            if state.spec.module == module:
                self.gate.note_outcome(name, why, now)

    def timeout_of(self, script: str) -> float:
        state = self.scripts.get(script)
        return state.spec.timeout if state else 0.0

    # ----- what the operator's controls ask ---------------------------------------------------
    def script(self, name: str) -> ScriptState | None:
        return self.scripts.get(name)

    def modules(self, crashed: Collection[str]) -> list[str]:
        """Modules new workers import at start: not those of scripts that crashed (their
        import may be what kills a worker; they are imported by the run that needs them)."""
        return sorted({state.spec.module for name, state in self.scripts.items()
                       if name not in crashed})

    def run_now(self, name: str, now: float) -> bool:
        """Due at once (an operator's run-now); False when ``name`` is not scheduled here."""
        state = self.scripts.get(name)
        if state is None:
            return False
        self.scripts.set_due(state, min(state.next_due, now))
        return True

    def release_finished(self, name: str) -> None:
        """An operator's run-now of ``name`` reached this master: a finished lease of it
        whose release waits for this master's next grant (daemons/fleet/releases.py) is
        released now, so that the server taking the run-now is not refused until it
        expires."""
        self.leases.send_releases(self.clock.monotonic(), only=name)

    def retry_import(self, name: str) -> None:
        """An operator resumed ``name``: if its import failed, the next run tries again."""
        state = self.scripts.get(name)
        if name in self.unimportable and state is not None:
            self.unimportable.discard(name)
            self.scripts.enable(state)


"""The master's worker pool: it owns the worker slots and everything about them.

Spawning (and its back-off after a failed start, and the bounded spawn rate), the workers'
messages, their exits, every deadline a worker or its run has (the run's timeout, the kill
that follows a SIGTERM, an exit asked for, the worker's lifetime, the stop grace), the
recycling of restart-workers, and the stop. What it learns about runs and scripts goes to
its ``PoolEvents`` (the dispatcher): a run over, the modules a worker could not import.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base import logsink, protocol
from pandaserver.daemons.base.clock import Clock
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.master.crashloop import SpawnLimiter, spawn_limit
from pandaserver.daemons.master.pool import (
    ProcessLayer,
    RunContainment,
    Slot,
    describe_exit,
    new_slot,
    staggered_lifetime,
)

log = logging.getLogger("panda.master")

SHUTDOWN_KILL_GRACE = 1.0
MAX_SPAWN_BACKOFF = 30.0
DRAIN_POLL = 0.05  # trees killed with SIGKILL vanish within milliseconds


class PoolEvents(Protocol):
    """What the pool tells about runs and scripts (the dispatcher listens)."""

    def run_over(self, run: Run, outcome: str, error: str | None) -> None: ...

    def imports_reported(self, errors: dict[str, str]) -> None: ...

    def import_crashed(self, module: str, why: str, now: float) -> None: ...

    def timeout_of(self, script: str) -> float: ...


class WorkerPool:
    def __init__(self, *, clock: Clock, settings: Callable[[], DaemonSettings], single: bool,
                 argv: list[str], database: str | None, containment: RunContainment,
                 layer: ProcessLayer, preload: Callable[[], list[str]]) -> None:
        self.clock = clock
        self.settings = settings  # the configuration in force (a reload replaces it)
        self.single = single  # run-once: one worker
        self.argv = argv
        self.database = database
        self.containment = containment
        self.layer = layer
        self.preload = preload  # the modules new workers import at start
        self.events: PoolEvents | None = None  # set once by the master (``connect``)
        self.slots: dict[int, Slot] = {}
        self.draining: list[Slot] = []  # gone workers whose run's tree still has its grace
        self.stopping = False
        self.stop_deadline = math.inf
        self.spawn_backoff = 0.0
        self.spawn_not_before = 0.0
        self.fill_upto: int | None = None  # the last ``fill``'s limit: spawns beyond it wait
        self.first_generation = True
        self.spawns = SpawnLimiter()
        self.recycle: list[int] = []  # restart-workers: slots still to recycle

    def connect(self, events: PoolEvents) -> None:
        self.events = events

    def _events(self) -> PoolEvents:
        if self.events is None:
            raise RuntimeError("the worker pool was not connected to a dispatcher")
        return self.events

    @property
    def n_proc(self) -> int:
        return 1 if self.single else self.settings().n_proc

    # ----- what others ask ------------------------------------------------------------------
    def idle(self) -> list[Slot]:
        """Workers free for a run, by index."""
        return sorted((s for s in self.slots.values() if s.state is WorkerState.IDLE
                       and s.conn_open and s.reserved is None), key=lambda s: s.index)

    def holds(self, slot: Slot) -> bool:
        """Whether ``slot`` is still one of the pool's workers."""
        return self.slots.get(slot.index) is slot

    def with_runs(self) -> list[Slot]:
        """Every worker with a run, those whose run's tree is still draining included."""
        return [s for s in (*self.slots.values(), *self.draining) if s.run is not None]

    def all_busy(self) -> bool:
        return all(s.state is not WorkerState.IDLE for s in self.slots.values())

    @property
    def empty(self) -> bool:
        return not self.slots and not self.draining

    # ----- spawning -------------------------------------------------------------------------
    def fill(self, now: float, upto: int | None = None) -> None:
        """Start the missing workers (``upto``: only those of that index or lower; the
        first generation's others are started by a later call, still staggered)."""
        n_proc = self.n_proc
        self.fill_upto = upto
        missing = [i for i in range(1, n_proc + 1) if i not in self.slots]
        if not missing or now < self.spawn_not_before:
            return
        modules = self.preload()
        if upto is not None and missing[-1] > upto:
            missing = [i for i in missing if i <= upto]
            if not missing:
                return
            partial = True
        else:
            partial = False
        for index in missing:
            position = index - 1 if self.first_generation else 0
            if not self.spawns.allowed(now, spawn_limit(n_proc)):
                # a bounded rate whatever the config or the scripts do
                self.spawn_not_before = self.spawns.next_allowed(now, spawn_limit(n_proc))
                log.warning("%d workers started in the last %.0f s: the next starts in %.1f s",
                            spawn_limit(n_proc), self.spawns.window,
                            self.spawn_not_before - now)
                return
            self.spawns.note(now)
            settings = self.settings()
            lifetime = settings.proc_lifetime
            if self.first_generation:  # every slot is missing: positions 0 .. n_proc - 1
                lifetime = staggered_lifetime(lifetime, position, n_proc)
            try:
                self.slots[index] = new_slot(index, now, lifetime, self.argv, settings.package,
                                             modules, self.containment, self.database,
                                             self.layer)
            except OSError as exc:
                log.error("cannot start worker %d: %s", index, exc)
                self.back_off(now)
                return
        if not partial:
            self.first_generation = False

    def back_off(self, now: float) -> None:
        self.spawn_backoff = min(MAX_SPAWN_BACKOFF, max(1.0, self.spawn_backoff * 2))
        self.spawn_not_before = now + self.spawn_backoff
        log.error("next worker start in %.0f s", self.spawn_backoff)

    # ----- messages -------------------------------------------------------------------------
    def read_messages(self, slot: Slot) -> None:
        while slot.conn_open and slot.proc.conn.poll():
            try:
                message = protocol.recv(slot.proc.conn)
            except (EOFError, OSError):
                slot.conn_open = False
                return
            except protocol.ProtocolError as exc:
                log.error("worker %d: %s", slot.index, exc)
                continue
            self.on_message(slot, message)

    def on_message(self, slot: Slot, message: dict[str, Any]) -> None:
        try:
            self._handle_message(slot, message)
        except Exception:  # a malformed message must never end the master's loop
            log.exception("worker %d (pid %d): cannot handle message %.300r",
                          slot.index, slot.pid, message)

    def _handle_message(self, slot: Slot, message: dict[str, Any]) -> None:
        now = self.clock.monotonic()
        op = message["op"]
        logsink.worker_report(slot.index, message)  # log lines the worker had to drop
        if op == "importing":
            module = message.get("module")
            slot.importing = module if isinstance(module, str) else None
        elif op == "ready":
            slot.importing = None
            self.spawn_backoff = 0.0
            if slot.state is WorkerState.STARTING:
                slot.move(WorkerState.IDLE)
                if self.stopping:
                    slot.ask_exit(now)
            errors = message.get("import_errors")
            self._events().imports_reported(errors if isinstance(errors, dict) else {})
        elif op == "done" and slot.run is not None and slot.run.id == message.get("run"):
            run = slot.run
            slot.run = None
            if run.generation is not None:
                slot.send_deadline(None)
            run.started = _seconds(message.get("started"), run.dispatched)
            run.ended = _seconds(message.get("ended"), now)
            outcome, error = message.get("outcome"), message.get("error")
            if message.get("import_failed") is True:
                run.crash = "its module does not import"
            if outcome not in (protocol.OK, protocol.FAILED, protocol.LOST):
                error = f"the worker reported an unknown outcome {outcome!r}: {error}"
                outcome = protocol.LOST
            self._events().run_over(run, outcome, None if error is None else str(error))
            if slot.state is WorkerState.RETIRING:
                slot.ask_exit(now)
            elif slot.state is WorkerState.BUSY:
                slot.move(WorkerState.IDLE)

    # ----- exits ----------------------------------------------------------------------------
    def worker_gone(self, slot: Slot, now: float) -> None:
        """The worker's process ended (the caller has stopped watching its descriptors)."""
        code = slot.reap()
        self.containment.worker_gone(slot.pid)
        del self.slots[slot.index]
        expected = slot.state in (WorkerState.EXITING, WorkerState.KILLING)
        if slot.state is WorkerState.STARTING and not self.stopping:
            log.error("worker %d (pid %d) %s before it was ready%s", slot.index, slot.pid,
                      describe_exit(code), f", importing {slot.importing}"
                      if slot.importing else "")
            self.back_off(now)
            if slot.importing is not None:
                self._events().import_crashed(
                    slot.importing, f"importing its module, the worker {describe_exit(code)}",
                    now)
        elif not expected:
            log.warning("worker %d (pid %d) %s", slot.index, slot.pid, describe_exit(code))
        else:
            log.debug("worker %d (pid %d) %s", slot.index, slot.pid, describe_exit(code))
        if slot.run is None:
            return
        if slot.kill is not None and not slot.kill.killed and self.layer.any_alive(
                slot.kill.procs):
            self.draining.append(slot)  # its children still get their grace
            return
        self._close_gone_run(slot, code)

    def _close_gone_run(self, slot: Slot, code: int | None) -> None:
        run = slot.run
        assert run is not None
        slot.run = None
        run.ended = self.clock.monotonic()
        events = self._events()
        if run.fenced:
            events.run_over(run, protocol.FENCED, "; ".join(run.notes) or "lease not renewed")
        elif run.timed_out:
            limit = events.timeout_of(run.script)
            events.run_over(run, protocol.TIMEOUT, f"killed after its timeout of {limit:g} s")
        elif run.killed_by is not None:
            events.run_over(run, protocol.KILLED, run.killed_by)
        else:
            why = "; ".join(run.notes) or f"worker {describe_exit(code)} during the run"
            if not self.stopping:
                run.crash = f"the worker {describe_exit(code)} during the run"
            events.run_over(run, protocol.LOST, why)

    # ----- deadlines ------------------------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        for slot in list(self.slots.values()):
            run = slot.run
            if run is not None and not run.timed_out and now >= run.timeout_at:
                run.timed_out = True
                log.error("%s timed out after %.1f s", run.label, now - run.dispatched)
                slot.start_kill(now, f"{run.label} exceeded its timeout")
            if slot.kill is not None and not slot.kill.killed and now >= slot.kill.deadline:
                self.layer.finish_kill(slot.kill)
            if slot.exit_deadline is not None and now >= slot.exit_deadline and slot.kill is None:
                slot.start_kill(now, "did not exit when asked", grace=0)
            if now >= slot.expires and slot.state is WorkerState.IDLE and not self.stopping \
                    and slot.reserved is None:
                log.info("worker %d reached its lifetime: replacing it", slot.index)
                slot.ask_exit(now)
            elif now >= slot.expires and slot.state is WorkerState.BUSY:
                log.info("worker %d reached its lifetime: retiring after its run", slot.index)
                slot.move(WorkerState.RETIRING)
            if self.stopping and now >= self.stop_deadline and slot.state is not WorkerState.KILLING:
                if slot.run is not None:
                    slot.run.notes.append("killed at shutdown: still running after the stop grace")
                slot.start_kill(now, "stop grace is over", grace=SHUTDOWN_KILL_GRACE)
        if self.stopping and now >= self.stop_deadline:
            self.stop_deadline = math.inf  # acted on: the kills carry their own deadlines
        for slot in list(self.draining):
            assert slot.kill is not None
            if now >= slot.kill.deadline and not slot.kill.killed:
                self.layer.finish_kill(slot.kill)
            if slot.kill.killed or not self.layer.any_alive(slot.kill.procs):
                self.draining.remove(slot)
                self._close_gone_run(slot, slot.returncode)

    def next_event(self, now: float, times: list[float]) -> None:
        """Add to ``times`` the moments the pool must act at."""
        times.append(self.stop_deadline)
        # a spawn held back by the rate limit is due then; one held back by ``fill``'s limit
        # (worker 1 boots alone before the first hand-over) is not: that hand-over wakes
        # the loop, and waking for it meanwhile would spin the loop beside worker 1's boot
        wanted = self.n_proc if self.fill_upto is None else min(self.fill_upto, self.n_proc)
        if not self.stopping and any(i not in self.slots for i in range(1, wanted + 1)):
            times.append(self.spawn_not_before)
        for slot in [*self.slots.values(), *self.draining]:
            if slot.run is not None and not slot.run.timed_out:
                times.append(slot.run.timeout_at)
            if slot.kill is not None and not slot.kill.killed:
                times.append(slot.kill.deadline)
            if slot.exit_deadline is not None:
                times.append(slot.exit_deadline)
            # a worker kept for a lease answer is replaced after it (the answer wakes the
            # loop), not at its expiry: waking for that meanwhile would spin the loop
            if slot.state is WorkerState.BUSY or (slot.state is WorkerState.IDLE
                                                  and slot.reserved is None):
                times.append(slot.expires)
        if self.draining:
            times.append(now + DRAIN_POLL)

    # ----- stop, retire, recycle ------------------------------------------------------------
    def stop(self, now: float, grace: float) -> None:
        """Stop: idle workers exit now, busy ones after their run; what still runs when
        ``grace`` is over is killed."""
        self.stopping = True
        self.stop_deadline = now + grace
        for slot in self.slots.values():
            if slot.state in (WorkerState.IDLE, WorkerState.STARTING):
                slot.ask_exit(now)
            elif slot.state is WorkerState.BUSY:
                slot.move(WorkerState.RETIRING)

    def end_grace(self, now: float) -> None:
        """A second stop signal: the grace is over now."""
        self.stop_deadline = now

    def retire(self, indices: list[int], now: float) -> None:
        """Fewer workers: those at ``indices`` go, a busy one after its run."""
        for index in indices:
            slot = self.slots[index]
            if slot.state in (WorkerState.IDLE, WorkerState.STARTING):
                slot.ask_exit(now)
            elif slot.state is WorkerState.BUSY:
                slot.move(WorkerState.RETIRING)

    def expire_all(self, now: float) -> None:
        """Every worker reaches its lifetime now (each is replaced as its lifetime rules)."""
        for slot in self.slots.values():
            slot.expires = now

    def kill_runs_of(self, name: str, killed_by: str, now: float) -> list[str]:
        """Kill the runs of script ``name`` (an operator's kill); returns their labels."""
        killed = []
        for slot in self.slots.values():
            run = slot.run
            if run is not None and run.script == name and run.killed_by is None:
                run.killed_by = killed_by
                log.warning("%s: %s", run.label, run.killed_by)
                slot.start_kill(now, f"{run.label} {run.killed_by}")
                killed.append(run.label)
        return killed

    def recycle_all(self) -> int:
        """restart-workers: every worker is recycled, one at a time (``recycle_next``)."""
        self.recycle = sorted(self.slots)
        return len(self.recycle)

    def recycle_next(self, now: float) -> float | None:
        """Recycle the next worker once every worker is up and none is being replaced (a
        timer of the loop: it never asks to be woken)."""
        if not self.recycle or self.stopping:
            return None
        if len(self.slots) < self.n_proc or any(
                s.state is not WorkerState.IDLE and s.state is not WorkerState.BUSY
                for s in self.slots.values()):
            return None
        self.recycle = [i for i in self.recycle if i in self.slots]
        if not self.recycle:
            return None
        # an idle worker first: a busy one waits for its run (maybe long) before it goes,
        # and the others should not wait behind it
        idle = [i for i in self.recycle if self.slots[i].state is WorkerState.IDLE
                and self.slots[i].reserved is None]
        index = idle[0] if idle else self.recycle[0]
        self.recycle.remove(index)
        slot = self.slots[index]
        log.info("worker %d recycled (restart-workers)%s", slot.index,
                 " after its run" if slot.state is WorkerState.BUSY else "")
        if slot.state is WorkerState.BUSY:
            slot.move(WorkerState.RETIRING)
        elif slot.reserved is None:
            slot.ask_exit(now)
        else:
            slot.expires = now  # kept for a lease answer: its lifetime ends it after
        return None


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default

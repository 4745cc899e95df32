"""The master: one event loop that owns all scheduling state.

It keeps ``n_proc`` workers, dispatches due scripts to idle ones, enforces timeouts and
lifetimes, and sleeps in a single wait over worker pipes, worker pidfds and a signal
self-pipe until its next event. Signal handlers only record; the loop acts.

``python -m pandaserver.daemons.master`` is the same as ``panda-daemon``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import selectors
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons import exitcodes, logsink, protocol, schedule
from pandaserver.daemons.clock import Clock, SystemClock
from pandaserver.daemons.fleet import DbLeases, DbRecorder, FleetDb
from pandaserver.daemons.keeper import LeaseKeeper
from pandaserver.daemons.leases import LeaseDecision, LeaseManager, LocalLeases
from pandaserver.daemons.pool import (
    KILL_GRACE,
    Slot,
    describe_exit,
    new_slot,
    staggered_lifetime,
)
from pandaserver.daemons.processes import any_alive, finish_kill, set_title
from pandaserver.daemons.runs import LogRecorder, Recorder, Run, RunRecord
from pandaserver.daemons.schedule import REMOVED, ScriptState
from pandaserver.daemons.states import WorkerState
from pandaserver.daemons.status import StatusFile
from pandaserver.daemons.watchdog import encode_deadline

log = logging.getLogger("panda.master")

SHUTDOWN_KILL_GRACE = 1.0
MAX_SPAWN_BACKOFF = 30.0
MIN_LEASE_RETRY = 0.05
ONCE_EXIT = {protocol.OK: exitcodes.RET_OK, protocol.FAILED: exitcodes.RET_FAILED,
             protocol.TIMEOUT: exitcodes.RET_TIMEOUT, protocol.LOST: exitcodes.RET_LOST,
             protocol.FENCED: exitcodes.RET_LOST, protocol.SKIPPED: exitcodes.RET_LEASE}


class Master:
    def __init__(
        self,
        settings: DaemonSettings,
        *,
        server: str,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
        leases: LeaseManager | None = None,
        only: str | None = None,
        log_level: str = "INFO",
        reload_settings: Callable[[], DaemonSettings] | None = None,
        on_signal: dict[int, Callable[[], None]] | None = None,
        worker_log_file: str | None = None,
        fleet: FleetDb | None = None,
        config_path: str | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.settings = settings
        self.server = server
        self.clock = clock or SystemClock()
        self.fleet = fleet
        self.config_path = config_path
        self.recorder = recorder or (DbRecorder(fleet) if fleet else LogRecorder())
        self.leases: LeaseManager = leases or (DbLeases(fleet) if fleet else LocalLeases())
        self.keeper = LeaseKeeper(self.leases, KILL_GRACE)
        self.only = only
        self.log_level = log_level
        self.reload_settings = reload_settings
        self.on_signal = on_signal or {}
        self.worker_log_file = worker_log_file
        self.scripts: dict[str, ScriptState] = {}
        self.slots: dict[int, Slot] = {}
        self.draining: list[Slot] = []
        self.stopping = False
        self.stop_deadline = math.inf
        self.once_outcome: str | None = None
        self.run_counter = 0
        self.spawn_backoff = 0.0
        self.spawn_not_before = 0.0
        self.first_generation = True
        self._signals: list[int] = []
        self._wakeup_r = -1
        self._selector = selectors.DefaultSelector()
        self.extra_events: list[Callable[[float], float | None]] = []
        if fleet is not None:
            if only is not None:  # run-once is not a fleet member: no heartbeat row
                fleet.next_beat = math.inf
            self.extra_events.append(fleet.tick)
        self.started = self.clock.monotonic()
        self.last_outcomes: dict[str, tuple[str, float]] = {}
        self.unimportable: set[str] = set()  # disabled because a worker could not import them
        self.status = StatusFile(status_file) if status_file is not None else None
        if self.status is not None:
            status = self.status
            self.extra_events.append(lambda now: status.tick(self, now))

    # ----- set-up -------------------------------------------------------------------------
    @property
    def n_proc(self) -> int:
        return 1 if self.only is not None else self.settings.n_proc

    def _specs(self, settings: DaemonSettings) -> dict[str, DaemonSpec]:
        if self.only is not None:
            return {self.only: settings.scripts[self.only]}
        return {spec.name: spec for spec in settings.enabled_scripts}

    def _install_signals(self) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup_r = read_end
        signal.set_wakeup_fd(write_end)
        watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *self.on_signal}
        for signum in watched:
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    # ----- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        set_title(f"master{'' if self.only is None else ' run-once ' + self.only}")
        now = self.clock.monotonic()
        for spec in self._specs(self.settings).values():
            self.scripts[spec.name] = ScriptState(spec=spec, next_due=schedule.first_due(now))
        log.info("master started on %s (pid %d): %d scripts, %d workers",
                 self.server, os.getpid(), len(self.scripts), self.n_proc)
        while True:
            # every step below may take a moment (a spawn, a walk over /proc): each reads
            # the clock afresh rather than trust a reading taken before it
            self._handle_signals(self.clock.monotonic())
            if self.fleet is not None:
                self.fleet.check_deadlines(self.clock.monotonic())
            self.keeper.tick(self.clock.monotonic())
            self._pass_deadlines()
            self._check_deadlines(self.clock.monotonic())
            if self.stopping and not self.slots and not self.draining:
                break
            if not self.stopping:
                self._fill_slots(self.clock.monotonic())
                self._dispatch(self.clock.monotonic())
                self._warn_late(self.clock.monotonic())
            # timers (history hand-over, heartbeats) may take a moment: measure the timeout
            # from after them, or the master would wake late by that much
            next_event = self._next_event(self.clock.monotonic())
            self._wait(next_event - self.clock.monotonic())
        if self.status is not None:
            self.status.tick(self, self.clock.monotonic(), force=True)
        if self.fleet is not None:
            self.fleet.close()
        log.info("master stopped")
        if self.only is not None:
            return ONCE_EXIT.get(self.once_outcome or protocol.LOST, exitcodes.RET_LOST)
        return exitcodes.RET_OK

    def _watched(self) -> dict[int, tuple[str, Slot | None]]:
        fds: dict[int, tuple[str, Slot | None]] = {self._wakeup_r: ("signal", None)}
        if self.fleet is not None:
            fds[self.fleet.fileno()] = ("db", None)
        for slot in self.slots.values():
            fds[slot.proc.pidfd] = ("exit", slot)
            if slot.conn_open:
                fds[slot.proc.conn.fileno()] = ("message", slot)
        return fds

    def _wait(self, timeout: float) -> None:
        """One wait over the signal pipe, worker pipes and worker pidfds (a kept selector:
        descriptors are registered once, not on every wake-up)."""
        wanted = self._watched()
        registered = self._selector.get_map()
        for fd in [fd for fd in registered if fd not in wanted]:
            self._selector.unregister(fd)
        for fd, data in wanted.items():
            key = registered.get(fd)
            if key is not None and key.data != data:
                # a descriptor number reused by a new worker: register it afresh (the
                # kernel dropped the old registration when the old descriptor was closed)
                self._selector.unregister(fd)
                key = None
            if key is None:
                self._selector.register(fd, selectors.EVENT_READ, data)
        events = self._selector.select(max(0.0, timeout))
        exits = []
        for key, _ in events:
            kind, slot = key.data
            if kind == "signal":
                self._drain_wakeup()
            elif kind == "db" and self.fleet is not None:
                self.fleet.collect()
            elif kind == "message" and slot is not None and slot.conn_open:
                self._read_messages(slot)
            elif kind == "exit" and slot is not None:
                exits.append(slot)
        for slot in exits:  # after its last messages were read
            if slot.index in self.slots and self.slots[slot.index] is slot:
                self._worker_gone(slot, self.clock.monotonic())

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _next_event(self, now: float) -> float:
        times = [self.stop_deadline]
        if not self.stopping:
            nxt = schedule.next_wakeup(self.scripts.values(), now)
            if nxt is not None:
                times.append(nxt)
            if len(self.slots) < self.n_proc:
                times.append(self.spawn_not_before)
        for slot in [*self.slots.values(), *self.draining]:
            if slot.run is not None and not slot.run.timed_out:
                times.append(slot.run.timeout_at)
            if slot.kill is not None and not slot.kill.killed:
                times.append(slot.kill.deadline)
            if slot.exit_deadline is not None:
                times.append(slot.exit_deadline)
            if slot.state in (WorkerState.IDLE, WorkerState.BUSY):
                times.append(slot.expires)
        for event in self.extra_events:
            when = event(now)
            if when is not None:
                times.append(when)
        when = self.keeper.next_event(now)
        if when is not None:
            times.append(when)
        if self.draining:
            times.append(now + 0.05)  # trees killed with SIGKILL vanish within milliseconds
        return min(times)

    # ----- signals ------------------------------------------------------------------------
    def _handle_signals(self, now: float) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second %s: killing what still runs", signal.Signals(signum).name)
                    self.stop_deadline = now
                else:
                    log.info("got %s: stopping", signal.Signals(signum).name)
                    self.begin_stop(now)
            elif signum == signal.SIGHUP:
                self._reload(now)
            elif signum in self.on_signal:
                self.on_signal[signum]()

    def begin_stop(self, now: float, grace: float | None = None) -> None:
        self.stopping = True
        self.stop_deadline = now + (self.settings.stop_grace if grace is None else grace)
        for slot in self.slots.values():
            if slot.state in (WorkerState.IDLE, WorkerState.STARTING):
                slot.ask_exit(now)
            elif slot.state is WorkerState.BUSY:
                slot.move(WorkerState.RETIRING)

    def _reload(self, now: float) -> None:
        if self.reload_settings is None or self.only is not None:
            log.info("got SIGHUP: nothing to reload")
            return
        try:
            new = self.reload_settings()
        except Exception as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        unusable = new.unusable()
        if unusable:
            for problem in unusable:
                log.error("reload refused, keeping the running configuration: %s", problem)
            return
        from pandaserver.daemons.reload import apply_settings

        apply_settings(self, new, now)

    # ----- workers ------------------------------------------------------------------------
    def _worker_argv(self) -> list[str]:
        argv = ["--server-name", self.server, "--log-level", self.log_level]
        if self.worker_log_file:
            argv += ["--log-file", self.worker_log_file]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv

    def _fill_slots(self, now: float) -> None:
        missing = [i for i in range(1, self.n_proc + 1) if i not in self.slots]
        if not missing or now < self.spawn_not_before:
            return
        modules = sorted({state.spec.module for state in self.scripts.values()})
        for position, index in enumerate(missing):
            lifetime = self.settings.proc_lifetime
            if self.first_generation:
                lifetime = staggered_lifetime(lifetime, position, len(missing))
            try:
                self.slots[index] = new_slot(index, now, lifetime, self._worker_argv(),
                                             self.settings.package, modules)
            except OSError as exc:
                log.error("cannot start worker %d: %s", index, exc)
                self._back_off(now)
                return
        self.first_generation = False

    def _back_off(self, now: float) -> None:
        self.spawn_backoff = min(MAX_SPAWN_BACKOFF, max(1.0, self.spawn_backoff * 2))
        self.spawn_not_before = now + self.spawn_backoff
        log.error("next worker start in %.0f s", self.spawn_backoff)

    def _read_messages(self, slot: Slot) -> None:
        while slot.conn_open and slot.proc.conn.poll():
            try:
                message = protocol.recv(slot.proc.conn)
            except (EOFError, OSError):
                slot.conn_open = False
                return
            except protocol.ProtocolError as exc:
                log.error("worker %d: %s", slot.index, exc)
                continue
            self._on_message(slot, message)

    def _on_message(self, slot: Slot, message: dict[str, Any]) -> None:
        try:
            self._handle_message(slot, message)
        except Exception:  # a malformed message must never end the master's loop
            log.exception("worker %d (pid %d): cannot handle message %.300r",
                          slot.index, slot.pid, message)

    def _handle_message(self, slot: Slot, message: dict[str, Any]) -> None:
        now = self.clock.monotonic()
        op = message["op"]
        logsink.worker_report(slot.index, message)  # log lines the worker had to drop
        if op == "ready":
            self.spawn_backoff = 0.0
            if slot.state is WorkerState.STARTING:
                slot.move(WorkerState.IDLE)
                if self.stopping:
                    slot.ask_exit(now)
            errors = message.get("import_errors")
            self._disable_unimportable(errors if isinstance(errors, dict) else {})
        elif op == "done" and slot.run is not None and slot.run.id == message.get("run"):
            run = slot.run
            slot.run = None
            if run.generation is not None:
                self._send_deadline(slot, None)
            run.started = _seconds(message.get("started"), run.dispatched)
            run.ended = _seconds(message.get("ended"), now)
            outcome, error = message.get("outcome"), message.get("error")
            if outcome not in (protocol.OK, protocol.FAILED, protocol.LOST):
                error = f"the worker reported an unknown outcome {outcome!r}: {error}"
                outcome = protocol.LOST
            self._finish_run(run, outcome, None if error is None else str(error))
            if slot.state is WorkerState.RETIRING:
                slot.ask_exit(now)
            elif slot.state is WorkerState.BUSY:
                slot.move(WorkerState.IDLE)

    def _disable_unimportable(self, errors: dict[str, str]) -> None:
        """Each worker reports which modules it could not import: a script is scheduled
        again as soon as a worker imports its module (say, after a fix and a recycle)."""
        for state in self.scripts.values():
            error = errors.get(state.spec.module)
            if error is not None and state.disabled is None:
                state.disabled = error
                self.unimportable.add(state.spec.name)
                log.error("script %s will not run: %s", state.spec.name, error)
                if self.only is not None:
                    self.once_outcome = protocol.FAILED
                    self.begin_stop(self.clock.monotonic(), grace=0)
            elif error is None and state.spec.name in self.unimportable:
                self.unimportable.discard(state.spec.name)
                state.disabled = None
                log.info("script %s imports now: scheduled again", state.spec.name)

    def _worker_gone(self, slot: Slot, now: float) -> None:
        for fd in (slot.proc.pidfd, slot.proc.conn_fd):  # before they close and get reused
            if fd in self._selector.get_map():
                self._selector.unregister(fd)
        code = slot.reap()
        del self.slots[slot.index]
        expected = slot.state in (WorkerState.EXITING, WorkerState.KILLING)
        if slot.state is WorkerState.STARTING and not self.stopping:
            log.error("worker %d (pid %d) %s before it was ready", slot.index, slot.pid,
                      describe_exit(code))
            self._back_off(now)
        elif not expected:
            log.warning("worker %d (pid %d) %s", slot.index, slot.pid, describe_exit(code))
        else:
            log.debug("worker %d (pid %d) %s", slot.index, slot.pid, describe_exit(code))
        if slot.run is None:
            return
        if slot.kill is not None and not slot.kill.killed and any_alive(slot.kill.procs):
            self.draining.append(slot)  # its children still get their grace
            return
        self._close_gone_run(slot, code)

    def _close_gone_run(self, slot: Slot, code: int | None) -> None:
        run = slot.run
        assert run is not None
        slot.run = None
        run.ended = self.clock.monotonic()
        if run.fenced:
            self._finish_run(run, protocol.FENCED, "; ".join(run.notes) or "lease not renewed")
        elif run.timed_out:
            spec = self.scripts.get(run.script)
            limit = spec.spec.timeout if spec else 0.0
            self._finish_run(run, protocol.TIMEOUT, f"killed after its timeout of {limit:g} s")
        else:
            why = "; ".join(run.notes) or f"worker {describe_exit(code)} during the run"
            self._finish_run(run, protocol.LOST, why)

    def _fence(self, now: float) -> None:
        """Kill runs whose lease cannot be confirmed before it may expire (self-fencing)."""
        fences = set(self.keeper.due_fences(now))
        if not fences:
            return
        for slot in [*self.slots.values(), *self.draining]:
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
        for run_id in fences:  # a run already gone: nothing to kill, no lease to renew
            self.keeper.fenced(run_id)

    def _check_deadlines(self, now: float) -> None:
        self._fence(now)
        for slot in list(self.slots.values()):
            run = slot.run
            if run is not None and not run.timed_out and now >= run.timeout_at:
                run.timed_out = True
                log.error("%s timed out after %.1f s", run.label, now - run.dispatched)
                slot.start_kill(now, f"{run.label} exceeded its timeout")
            if slot.kill is not None and not slot.kill.killed and now >= slot.kill.deadline:
                finish_kill(slot.kill)
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
                finish_kill(slot.kill)
            if slot.kill.killed or not any_alive(slot.kill.procs):
                self.draining.remove(slot)
                self._close_gone_run(slot, slot.returncode)

    # ----- scheduling ---------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        idle = sorted((s for s in self.slots.values() if s.state is WorkerState.IDLE
                       and s.conn_open and s.reserved is None), key=lambda s: s.index)
        if not idle:
            return
        for state in schedule.due_scripts(self.scripts.values(), now):
            if not idle:
                break
            if not state.spec.sync:
                if self._hand_over(idle, state, None, None) is None:
                    break  # every idle worker's channel was broken
                continue
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
                self._hand_over(candidates, state, decision.generation, decision.sent) is None:
            log.info("%s: lease generation %s granted but not used (%s); releasing it",
                     spec.name, decision.generation,
                     "stopping" if self.stopping else "no worker free" if usable else
                     "removed or disabled meanwhile")
            self.leases.release(spec.name, decision.generation)

    def _hand_over(self, idle: list[Slot], state: ScriptState, generation: int | None,
                   lease_sent: float | None) -> Slot | None:
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
                slot.run = run
                self.recorder.start(run)  # its history row, written by the batched writer
                state.running = run.id
                state.run_started = now
                if self.only is not None:
                    state.next_due = math.inf
                elif generation is not None:
                    # the fleet-wide due time the lease just set: this grant + period
                    state.next_due = now + spec.period
                else:
                    state.next_due = schedule.next_due_after_start(now, spec.period)
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
        """Another server holds the lease (recorded as skipped) or it is not due fleet-wide
        yet (we try again when it is), or the database is down (the fleet logs that once)."""
        if decision.holder is not None:
            self.run_counter += 1
            self.recorder.record(RunRecord(
                script=state.spec.name, server=self.server, pid=os.getpid(),
                run_id=self.run_counter, generation=None, outcome=protocol.SKIPPED,
                error=f"lease held by {decision.holder}",
                duration=0.0, dispatch_delay=0.0, queued=now - state.next_due, ended=now))
        elif decision.unavailable:
            log.debug("%s skipped: no lease while the database is unavailable", state.spec.name)
        else:
            log.debug("%s not due fleet-wide for %.3f s", state.spec.name, decision.wait)
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
        for state in schedule.late_to_warn(self.scripts.values(), now):
            state.late_warned_for = state.next_due
            why = ("its previous run is still going" if state.running is not None
                   else f"all {self.n_proc} workers are busy" if busy else "waiting for a worker")
            log.warning("%s is %.0f s late (%s)", state.spec.name, now - state.next_due, why)

    def _finish_run(self, run: Run, outcome: str, error: str | None) -> None:
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


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def main() -> None:
    from pandaserver.cli import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()

"""The master's workers: spawn and replace them, read their messages, notice their exits,
and enforce every deadline a run has (timeout, lifetime, stop grace, lease fencing)."""

from __future__ import annotations

import logging
import math
from typing import Any

from pandaserver.daemons.base import logsink, protocol
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.containment.processes import any_alive, finish_kill
from pandaserver.daemons.master.core import MasterCore
from pandaserver.daemons.master.crashloop import spawn_limit
from pandaserver.daemons.master.pool import (
    Slot,
    describe_exit,
    new_slot,
    staggered_lifetime,
)

log = logging.getLogger("panda.master")

SHUTDOWN_KILL_GRACE = 1.0
MAX_SPAWN_BACKOFF = 30.0


class Supervising(MasterCore):
    # _wait unregisters a gone worker's descriptors before they close and are reused
    def _forget_fds(self, slot: Slot) -> None:
        raise NotImplementedError

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
        modules = self._preload()
        for position, index in enumerate(missing):
            if not self.spawns.allowed(now, spawn_limit(self.n_proc)):
                # a bounded rate whatever the config or the scripts do
                self.spawn_not_before = self.spawns.next_allowed(now, spawn_limit(self.n_proc))
                log.warning("%d workers started in the last %.0f s: the next starts in %.1f s",
                            spawn_limit(self.n_proc), self.spawns.window,
                            self.spawn_not_before - now)
                return
            self.spawns.note(now)
            lifetime = self.settings.proc_lifetime
            if self.first_generation:
                lifetime = staggered_lifetime(lifetime, position, len(missing))
            try:
                self.slots[index] = new_slot(index, now, lifetime, self._worker_argv(),
                                             self.settings.package, modules, self.containment,
                                             self.database)
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
            self._disable_unimportable(errors if isinstance(errors, dict) else {})
        elif op == "done" and slot.run is not None and slot.run.id == message.get("run"):
            run = slot.run
            slot.run = None
            if run.generation is not None:
                self._send_deadline(slot, None)
            run.started = _seconds(message.get("started"), run.dispatched)
            run.ended = _seconds(message.get("ended"), now)
            outcome, error = message.get("outcome"), message.get("error")
            if message.get("import_failed") is True:
                run.crash = "its module does not import"
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
        self._forget_fds(slot)
        code = slot.reap()
        self.containment.worker_gone(slot.pid)
        del self.slots[slot.index]
        expected = slot.state in (WorkerState.EXITING, WorkerState.KILLING)
        if slot.state is WorkerState.STARTING and not self.stopping:
            log.error("worker %d (pid %d) %s before it was ready%s", slot.index, slot.pid,
                      describe_exit(code), f", importing {slot.importing}"
                      if slot.importing else "")
            self._back_off(now)
            for name, state in self.scripts.items():
                if slot.importing is not None and state.spec.module == slot.importing:
                    self._note_outcome(name, f"importing its module, the worker"
                                             f" {describe_exit(code)}", now)
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
        elif run.killed_by is not None:
            self._finish_run(run, protocol.KILLED, run.killed_by)
        else:
            why = "; ".join(run.notes) or f"worker {describe_exit(code)} during the run"
            if not self.stopping:
                run.crash = f"the worker {describe_exit(code)} during the run"
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
        for run_id in fences:  # its worker gone: what it left must die now, not after a grace
            self.keeper.fenced(run_id)
            self.containment.hurry(run_id)

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


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default

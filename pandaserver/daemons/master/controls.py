"""The master's side of the operators' commands, and its crash-loop back-off.

Every ``[daemon] command_interval`` seconds (default 2) the master polls the shared
database on its ``house`` lane, never on its loop (``ControlStore.poll``): it writes when it
acted on the commands seen at the last poll, reports its state (draining, crash-looping
scripts) and reads the pauses and drains in force and the new commands meant for it. The
answer is applied on the loop thread:

- pause / resume: the set of paused scripts is the database's (``daemon_hold``); a paused
  script is not started here, a run in progress finishes;
- run-now: taken by one server (a conditional update); the script is due at once,
  bypassing a pause and a back-off, and its period counts from this run;
- kill: the script's run here is killed (its tree, politely then SIGKILL) and recorded as
  ``killed`` with the operator's reason;
- drain / undrain: no new sync lease is asked for here while draining;
- restart-workers: every worker is recycled, one at a time (a busy one after its run).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.master import crashloop
from pandaserver.daemons.master.core import MasterCore
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.db import operator_commands as dbcontrol

log = logging.getLogger("panda.master")


def _who(hold: dbcontrol.Hold | dbcontrol.Command) -> str:
    reason = f" ({hold.reason})" if hold.reason else ""
    return f"{hold.requested_by}{reason}"


class Controlling(MasterCore):
    def _init_control(self) -> None:
        self.paused: dict[str, dbcontrol.Hold] = {}
        self.drain_hold: dbcontrol.Hold | None = None
        self.run_now: set[str] = set()
        self.held_back: dict[str, ScriptState] = {}  # due, taken off the timetable
        self.crashes = crashloop.CrashLoops(self.settings.crash_backoff_max)
        self.spawns = crashloop.SpawnLimiter()
        self.recycle: list[int] = []
        self.control_after: int | None = None
        self.control_acks: list[tuple[int, str]] = []
        self.next_poll = 0.0
        self.polling = False
        self.control = dbcontrol.ControlStore(self.fleet.engine) if self.fleet else None

    # ----- what the dispatcher asks ---------------------------------------------------------
    def _may_start(self, state: ScriptState, now: float) -> bool:
        """The one check of the due loop: paused, draining (sync scripts), backed off."""
        name = state.spec.name
        if name in self.run_now:
            return True
        if name in self.paused or self.crashes.blocked(name, now):
            return False
        return not (state.spec.sync and self.drain_hold is not None)

    def _dispatched(self, name: str) -> None:
        self.run_now.discard(name)

    def _hold_back(self, state: ScriptState) -> None:
        """A due script that may not start now leaves the timetable until it may."""
        self.held_back[state.spec.name] = state

    def _release_held(self, now: float) -> bool:
        """Put back on the timetable the held-back scripts that may start now."""
        released = False
        for name, state in list(self.held_back.items()):
            if self.scripts.get(name) is not state:  # removed or replaced by a reload
                del self.held_back[name]
            elif self._may_start(state, now):
                del self.held_back[name]
                self.scripts.requeue(state)
                released = True
        return released

    # ----- crashes -------------------------------------------------------------------------
    def _note_outcome(self, name: str, crashed: str | None, now: float) -> None:
        """After every run: ``crashed`` says why it was a crash (None: a clean run)."""
        if crashed is None:
            before = self.crashes.clean(name)
            if before is not None and before.looping:
                log.info("script %s ran cleanly: no longer crash-looping", name)
            return
        record = self.crashes.crashed(name, now, crashed)
        log.error("script %s crashed (%d in a row: %s); next attempt in %.1f s%s", name,
                  record.failures, crashed, record.until - now,
                  "; it is crash-looping" if record.looping else "")

    def _preload(self) -> list[str]:
        """Modules new workers import at start: not those of scripts that crashed (their
        import may be what kills a worker; they are imported by the run that needs them)."""
        return sorted({state.spec.module for name, state in self.scripts.items()
                       if name not in self.crashes.scripts})

    # ----- the poll ------------------------------------------------------------------------
    def _control_tick(self, now: float) -> float | None:
        """Poll when due, recycle the next worker; returns when to be called again."""
        self._recycle_next(now)
        times = [t for t in (self.crashes.next_event(now),) if t is not None]
        if self.held_back and self._release_held(now):
            times.append(now)  # due at once: the loop dispatches them next
        if self.fleet is None or self.control is None or self.only is not None:
            return min(times) if times else None
        fleet, store = self.fleet, self.control
        if now >= self.next_poll and not self.polling and fleet.usable(now) \
                and not fleet.lanes["house"].busy:
            self.polling = True
            self.next_poll = now + self.settings.command_interval
            acks, self.control_acks = self.control_acks, []
            after, server, pid, state = self.control_after, self.server, os.getpid(), \
                self._report()

            def done(result: Any, error: BaseException | None, late: bool) -> None:
                self.polling = False
                if error is not None or result is None:
                    self.control_acks = acks + self.control_acks  # written at the next poll
                    return
                self._apply_poll(result, self.clock.monotonic())

            fleet._submit("house", "operator commands",
                          lambda: store.poll(server, pid, after, acks, state), done)
        times.append(self.next_poll if not self.polling else math.inf)
        return min(times)

    def _report(self) -> dict[str, Any]:
        return {"draining": self.drain_hold is not None, "paused": sorted(self.paused),
                "crash_looping": self.crashes.looping()}

    def _apply_poll(self, result: dbcontrol.PollResult, now: float) -> None:
        paused = {h.name: h for h in result.holds if h.kind == dbcontrol.PAUSE}
        for name in sorted(set(paused) - set(self.paused)):
            if name in self.scripts:
                log.info("script %s paused by %s", name, _who(paused[name]))
        for name in sorted(set(self.paused) - set(paused)):
            if name in self.scripts:
                log.info("script %s resumed", name)
        self.paused = paused
        drain = next((h for h in result.holds if h.kind == dbcontrol.DRAIN), None)
        if (drain is None) != (self.drain_hold is None):
            log.info("%s", f"draining, asked by {_who(drain)}: no new sync lease is taken here"
                     if drain is not None else "no longer draining: sync scripts run here again")
        self.drain_hold = drain
        self.control_after = result.last_id
        for command in result.commands:
            try:
                self._act(command, now)
            except Exception:  # a bad row must never end the master's loop
                log.exception("operator command %d (%s) failed", command.id, command.verb)
                self.control_acks.append((command.id, "failed: see the master's log"))

    def _act(self, command: dbcontrol.Command, now: float) -> None:
        verb, name = command.verb, command.target
        state = self.scripts.get(name)
        ack = self.control_acks.append
        if verb in (dbcontrol.PAUSE, dbcontrol.RESUME):
            if state is None:
                ack((command.id, f"no script {name} here"))
                return
            if verb == dbcontrol.RESUME and self.crashes.clean(name) is not None:
                log.info("script %s resumed by %s: its crash back-off is reset", name,
                         _who(command))
                if name in self.unimportable:  # tried again: the run imports it
                    self.unimportable.discard(name)
                    state.disabled = None
            ack((command.id, "paused" if name in self.paused else "running"))
        elif verb in (dbcontrol.DRAIN, dbcontrol.UNDRAIN):
            ack((command.id, "draining" if self.drain_hold is not None else "not draining"))
        elif verb == dbcontrol.KILL:
            ack((command.id, self._kill_script(name, command, now)))
        elif verb == dbcontrol.RESTART_WORKERS:
            self.recycle = sorted(self.slots)
            log.info("restart-workers asked by %s: recycling %d worker(s), one at a time",
                     _who(command), len(self.recycle))
            ack((command.id, f"recycling {len(self.recycle)} worker(s)"))
        elif verb == dbcontrol.RUN_NOW:
            self._run_now(command, state)

    def _kill_script(self, name: str, command: dbcontrol.Command, now: float) -> str:
        killed = []
        for slot in self.slots.values():
            run = slot.run
            if run is not None and run.script == name and run.killed_by is None:
                run.killed_by = f"killed by {_who(command)}"
                log.warning("%s: %s", run.label, run.killed_by)
                slot.start_kill(now, f"{run.label} {run.killed_by}")
                killed.append(run.label)
        return f"killed {', '.join(killed)}" if killed else f"{name} not running here"

    def _run_now(self, command: dbcontrol.Command, state: ScriptState | None) -> None:
        name = command.target
        why = ("not configured here" if state is None else
               f"not runnable here: {state.disabled}" if state.disabled is not None else
               "draining" if state.spec.sync and self.drain_hold is not None else None)
        if why is not None or self.fleet is None or self.control is None:
            self.control_acks.append((command.id, f"not taken: {name} {why}"))
            return
        store, server = self.control, self.server
        lease = name if state is not None and state.spec.sync else None

        def done(holder: Any, error: BaseException | None, late: bool) -> None:
            if error is not None or late:
                self.control_acks.append((command.id, "not taken: the database failed"))
                return
            current = self.scripts.get(name)
            if holder == server and current is not None:
                self.run_now.add(name)
                current.next_due = min(current.next_due, self.clock.monotonic())
                log.info("script %s: one extra run now, asked by %s", name, _who(command))
                self.control_acks.append((command.id, "taken: runs as soon as a worker is free"))
            else:
                self.control_acks.append((command.id, f"taken by {holder}"))

        self.fleet._submit("house", "run-now claim",
                           lambda: store.claim(command.id, server, lease), done)

    # ----- restart-workers -----------------------------------------------------------------
    def _recycle_next(self, now: float) -> None:
        """Recycle the next worker once every worker is up and none is being replaced."""
        if not self.recycle or self.stopping:
            return
        if len(self.slots) < self.n_proc or any(
                s.state is not WorkerState.IDLE and s.state is not WorkerState.BUSY
                for s in self.slots.values()):
            return
        self.recycle = [i for i in self.recycle if i in self.slots]
        if not self.recycle:
            return
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

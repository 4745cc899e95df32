"""The master: one event loop that owns all scheduling state.

It keeps ``n_proc`` workers, dispatches due scripts to idle ones, enforces timeouts and
lifetimes, and sleeps in a single wait over worker pipes, worker pidfds and a signal
self-pipe until its next event. Signal handlers only record; the loop acts.

``python -m pandaserver.daemons.master`` (its ``__main__``) is the same as ``panda-daemon``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import selectors
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pandaserver import exitcodes
from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.clock import Clock, SystemClock
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.runs import LogRecorder, Recorder
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.containment.processes import set_title
from pandaserver.daemons.containment.tracker import Containment
from pandaserver.daemons.fleet.contention import Contentions
from pandaserver.daemons.fleet.dbleases import DbLeases, DbRecorder
from pandaserver.daemons.fleet.fleetdb import FleetDb
from pandaserver.daemons.fleet.keeper import LeaseKeeper
from pandaserver.daemons.fleet.leasemanager import LeaseManager, LocalLeases
from pandaserver.daemons.master import schedule
from pandaserver.daemons.master.controls import Controlling
from pandaserver.daemons.master.dispatch import Dispatching
from pandaserver.daemons.master.pool import Slot
from pandaserver.daemons.master.reload import apply_settings
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.statusfile import StatusFile
from pandaserver.daemons.master.supervise import Supervising

log = logging.getLogger("panda.master")
# The loop shares the interpreter with threads (the status file's writer, history, database
# lanes): one that holds the GIL when the loop wakes keeps it for up to the switch interval
# (5 ms by default) before the loop may run. 0.5 ms keeps that hand-over well under the
# dispatch-delay target; the master's threads are mostly idle, so switching costs little.
SWITCH_INTERVAL = 0.0005
ONCE_EXIT = {protocol.OK: exitcodes.RET_OK, protocol.FAILED: exitcodes.RET_FAILED,
             protocol.TIMEOUT: exitcodes.RET_TIMEOUT, protocol.LOST: exitcodes.RET_LOST,
             protocol.FENCED: exitcodes.RET_LOST, protocol.SKIPPED: exitcodes.RET_LEASE}


class Master(Supervising, Dispatching, Controlling):
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
        late_floor: float = schedule.LATE_FLOOR,
    ) -> None:
        self.settings = settings
        self.late_floor = late_floor  # the late warning's floor (PANDA_DAEMON_LATE_FLOOR)
        self.server = server
        self.clock = clock or SystemClock()
        self.fleet = fleet
        self.config_path = config_path
        # pinned at start: the workers' tbuf stays on the master's database (pool.new_slot)
        self.database = (fleet.engine.url.render_as_string(hide_password=False)
                         if fleet is not None else None)
        self.recorder = recorder or (DbRecorder(fleet) if fleet else LogRecorder())
        self.leases: LeaseManager = leases or (DbLeases(fleet) if fleet else LocalLeases())
        self.keeper = LeaseKeeper(self.leases, KILL_GRACE)
        self.only = only
        self.log_level = log_level
        self.reload_settings = reload_settings
        self.containment = Containment(monotonic=self.clock.monotonic)  # a run's processes
        self.on_signal = {**(on_signal or {}), signal.SIGCHLD: self.containment.reap}
        self.worker_log_file = worker_log_file
        self.scripts = {}
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
        self._wakeup_w = -1
        self._reloading: threading.Thread | None = None
        self._reload_again = False
        self._reloaded: queue.SimpleQueue[DaemonSettings | BaseException] = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self.extra_events: list[Callable[[float], float | None]] = [self.containment.tick]
        if fleet is not None:
            if only is not None:  # run-once is not a fleet member: no heartbeat row
                fleet.next_beat = math.inf
            self.extra_events.append(fleet.tick)
        self.started = self.clock.monotonic()
        self.last_outcomes: dict[str, tuple[str, float]] = {}
        self.contention = Contentions()
        self.unimportable: set[str] = set()  # disabled because a worker could not import them
        self._init_control()
        self.extra_events.append(self._control_tick)
        self.status = StatusFile(status_file) if status_file is not None else None
        if self.status is not None:
            status = self.status
            self.extra_events.append(lambda now: status.tick(self, now))

    # ----- set-up -------------------------------------------------------------------------
    def _install_signals(self) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup_r = read_end
        self._wakeup_w = write_end
        signal.set_wakeup_fd(write_end)
        watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *self.on_signal}
        for signum in watched:
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    # ----- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._install_signals()
        self.containment.start()
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
            self._apply_reload(self.clock.monotonic())
            if self.fleet is not None:
                self.fleet.check_deadlines(self.clock.monotonic())
            self.keeper.tick(self.clock.monotonic())
            self._pass_deadlines()
            self._check_deadlines(self.clock.monotonic())
            if self.stopping and not self.slots and not self.draining and \
                    not self.containment.busy:
                break
            if not self.stopping:
                self._fill_slots(self.clock.monotonic())
                self._dispatch(self.clock.monotonic())
                self._warn_late(self.clock.monotonic())
            # timers (history hand-over, heartbeats) may take a moment: measure the timeout
            # from after them, or the master would wake late by that much
            next_event = self._next_event(self.clock.monotonic())
            self._wait(next_event - self.clock.monotonic())
        self.containment.close()
        if self.status is not None:
            self.status.close(self, self.clock.monotonic())
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

    def _forget_fds(self, slot: Slot) -> None:
        for fd in (slot.proc.pidfd, slot.proc.conn_fd):  # before they close and get reused
            if fd in self._selector.get_map():
                self._selector.unregister(fd)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _next_event(self, now: float) -> float:
        times = [self.stop_deadline]
        if not self.stopping:
            nxt = self.scripts.next_wakeup(now)
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
        """SIGHUP: re-read and validate the config on a thread (the validation imports the
        script modules in a fresh interpreter: seconds, maybe); the loop applies the result
        when it comes back, and a SIGHUP meanwhile is served once that one is done."""
        if self.reload_settings is None or self.only is not None:
            log.info("got SIGHUP: nothing to reload")
            return
        if self._reloading is not None:
            self._reload_again = True
            return
        reload_settings = self.reload_settings

        def read() -> None:
            try:
                result: DaemonSettings | BaseException = reload_settings()
            except BaseException as exc:
                result = exc
            self._reloaded.put(result)
            with contextlib.suppress(OSError):
                os.write(self._wakeup_w, b"r")

        self._reloading = threading.Thread(target=read, name="reload", daemon=True)
        self._reloading.start()

    def _apply_reload(self, now: float) -> None:
        try:
            new = self._reloaded.get_nowait()
        except queue.Empty:
            return
        self._reloading = None
        if isinstance(new, BaseException):
            log.error("reload refused, keeping the running configuration: %s", new)
        elif unusable := new.unusable():
            for problem in unusable:
                log.error("reload refused, keeping the running configuration: %s", problem)
        elif not self.stopping:
            apply_settings(self, new, now)
        if self._reload_again:
            self._reload_again = False
            self._reload(now)

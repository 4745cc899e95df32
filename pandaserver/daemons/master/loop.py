"""The master: one event loop that wires its collaborators and owns the wait.

- ``WorkerPool`` (workers.py): the worker slots; spawning, messages, exits, deadlines,
  recycling, and the stop's kills;
- ``Dispatcher`` (dispatch.py): the timetable, leases, hand-over to idle workers, fencing,
  outcomes;
- ``Controls`` (controls.py): the operator's pause, drain, run-now, kill, restart-workers
  and the crash-loop back-off;
- ``reload.py``: a re-read configuration applied to the other three;
- ``LoopWait``, ``SignalPipe`` and ``Rereader`` (wakeups.py): the one wait over every
  descriptor, the signals recorded by their handlers (a self-pipe wakes the wait), and a
  SIGHUP's re-read of the configuration on a thread.

``Master`` builds them, sleeps in a single wait over worker pipes, worker pidfds, the
database's completions, the PostgreSQL connection that listens for operator commands and a
signal self-pipe until the earliest event any of them names, and handles signals, reload
and stop. With nothing due it sleeps until the earliest real deadline: every timer
(heartbeat, command read, history sweep, status file) names the moment it has work, and
periodic chores close to each other share a wake-up (``slack_due`` in the clock module).
Signal handlers only record; the loop acts.

``python -m pandaserver.daemons.master`` (its ``__main__``) is the same as ``panda-daemon``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pandaserver import exitcodes
from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.clock import Clock, SystemClock
from pandaserver.daemons.base.runs import LogRecorder, Recorder
from pandaserver.daemons.containment.processes import set_title
from pandaserver.daemons.containment.tracker import Containment
from pandaserver.daemons.fleet.late import LATE_LIMIT, LateFleet, StartupError
from pandaserver.daemons.fleet.leasemanager import LeaseManager, LocalLeases
from pandaserver.daemons.master import reload, schedule
from pandaserver.daemons.master.controls import ControlLink, Controls, FleetControl
from pandaserver.daemons.master.dispatch import Dispatcher
from pandaserver.daemons.master.firingnotes import FiringNotes, notes_path
from pandaserver.daemons.master.pool import ProcessLayer, RealProcesses, RunContainment
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.statusfile import StatusFile, remembered
from pandaserver.daemons.master.timetable import Timetable
from pandaserver.daemons.master.wakeups import LoopWait, Rereader, SignalPipe, SpinWatch
from pandaserver.daemons.master.workers import WorkerPool

if TYPE_CHECKING:  # imported when the database side opens (SQLAlchemy): late.py
    from pandaserver.daemons.fleet.fleetdb import FleetDb

log = logging.getLogger("panda.master")
# The loop shares the interpreter with threads (the status file's writer, history, database
# lanes): one that holds the GIL when the loop wakes keeps it for up to the switch interval
# (5 ms by default) before the loop may run. 0.5 ms keeps that hand-over well under the
# dispatch-delay target; the master's threads are mostly idle, so switching costs little.
SWITCH_INTERVAL = 0.0005
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
        late_floor: float = schedule.LATE_FLOOR,
        processes: ProcessLayer | None = None,
        containment: RunContainment | None = None,
        control: ControlLink | None = None,
        late: LateFleet | None = None,
    ) -> None:
        """``processes``, ``containment`` and ``control`` replace the OS calls about
        workers, the run containment and the operator-command rows (tests pass fakes).
        ``late`` (instead of ``fleet``): the database side, opened after the first run
        (``open_late``; daemons/fleet/late.py)."""
        self.settings = settings
        self.server = server
        self.clock = clock or SystemClock()
        self.fleet = fleet
        self.late = late
        self.refused: StartupError | None = None  # the database refused the late opening
        if late is not None:
            recorder, leases = recorder or late.runs, leases or late.leases
        elif fleet is not None:
            from pandaserver.daemons.fleet.dbleases import DbLeases, DbRecorder

            recorder, leases = recorder or DbRecorder(fleet), leases or DbLeases(fleet)
        self.only = only
        self.containment: RunContainment = containment or Containment(
            monotonic=self.clock.monotonic)  # a run's processes
        self.on_signal = {**(on_signal or {}), signal.SIGCHLD: self.containment.reap}
        if control is None and fleet is not None and only is None:
            control = FleetControl(fleet)
        self.controls = Controls(clock=self.clock, settings=lambda: self.settings,
                                 server=server, link=control,
                                 crash_backoff_max=settings.crash_backoff_max)
        self.pool = WorkerPool(
            clock=self.clock, settings=lambda: self.settings, single=only is not None,
            argv=worker_argv(server, log_level, worker_log_file, config_path),
            # pinned at start: the workers' tbuf stays on the master's database (new_slot)
            database=(fleet.engine.url.render_as_string(hide_password=False)
                      if fleet is not None else late.database if late is not None else None),
            containment=self.containment, layer=processes or RealProcesses(),
            preload=lambda: self.dispatcher.modules(self.controls.crashes.scripts))
        self.dispatcher = Dispatcher(
            clock=self.clock, scripts=Timetable(floor=late_floor), pool=self.pool,
            gate=self.controls, containment=self.containment, server=server, only=only,
            recorder=recorder or LogRecorder(), leases=leases or LocalLeases(),
            stop=self.begin_stop)
        self.pool.connect(self.dispatcher)
        self.controls.connect(self.dispatcher, self.pool)
        self.signals = SignalPipe()
        self.rereader = (Rereader(reload_settings, self.signals.wake)
                         if reload_settings is not None else None)
        self.waiter = LoopWait(self.signals, self.pool, self.clock)
        self.spin = SpinWatch()
        # the controls' command read before the fleet's tick: the tick sends it, with the
        # heartbeat when that is due too (one database call, one wake-up)
        self.extra_events: list[Callable[[float], float | None]] = [self.containment.tick,
                                                                    self.controls.tick]
        if fleet is not None:
            if only is not None:  # run-once is not a fleet member: no heartbeat row
                fleet.next_beat = math.inf
            self.extra_events.append(fleet.tick)
        self.extra_events += [self.pool.recycle_next, self.dispatcher.release_held]
        self.started = self.clock.monotonic()
        if late is not None:  # at the latest then, should no run start before
            self.extra_events.append(
                lambda now: self.started + LATE_LIMIT if self.late is not None else None)
        self.exit_reason = ""  # why run() returns a failure status, for the pid file
        self.status = StatusFile(status_file) if status_file is not None else None
        if status_file is not None and only is None:  # run-once waits for no firing
            self.dispatcher.firings = FiringNotes(notes_path(status_file))
        if self.status is not None:
            status = self.status
            self.extra_events.append(lambda now: status.tick(self, now))

    @property
    def stopping(self) -> bool:
        return self.pool.stopping

    @property
    def n_proc(self) -> int:
        return self.pool.n_proc

    def _specs(self, settings: DaemonSettings) -> dict[str, DaemonSpec]:
        """The scripts this master runs under ``settings``."""
        if self.only is not None:
            return {self.only: settings.scripts[self.only]}
        return {spec.name: spec for spec in settings.enabled_scripts}

    # ----- set-up -------------------------------------------------------------------------
    def begin(self, now: float) -> None:
        """Every configured script is due at ``now`` (it runs once at start-up); a cron
        script at its first firing (``schedule.first_firing``)."""
        scripts = self.dispatcher.scripts
        self.dispatcher.read_clocks()  # cron firings are wall-clock times
        if self.status is not None:  # what a previous master here waited for (cron)
            scripts.remembered = remembered(self.status.path)
        for spec in self._specs(self.settings).values():
            scripts[spec.name] = ScriptState(spec=spec, next_due=schedule.first_due(now))
            if self.only is not None and spec.cron is not None:  # run-once: now, too
                scripts.set_due(scripts[spec.name], now)
        for name, why in self.settings.waiting_imports.items():  # said by the preflight
            if (state := scripts.get(name)) is not None and self.only is None:
                scripts.disable(state, why)
                self.dispatcher.unimportable.add(name)

    # ----- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.signals.install({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *self.on_signal})
        self.containment.start()
        set_title(f"master{'' if self.only is None else ' run-once ' + self.only}")
        self.begin(self.clock.monotonic())
        held = len(self.dispatcher.unimportable)
        log.info("master started on %s (pid %d): %d scripts%s, %d workers", self.server,
                 os.getpid(), len(self.dispatcher.scripts) - held,
                 f" ({held} more wait until their module imports)" if held else "", self.n_proc)
        if self.fleet is not None:  # database calls start as the loop goes to sleep
            self.fleet.defer_calls(True)
        while (next_event := self.turn()) is not None:
            timeout = next_event - self.clock.monotonic()
            self.spin.waited(timeout)
            self.waiter.wait(timeout, self.fleet)
        self.signals.ignore()
        if self.late is not None:  # stopped first: what ran is still written
            self.open_late(self.clock.monotonic())
        if self.fleet is not None:
            self.fleet.defer_calls(False)
        self.containment.close()
        if self.status is not None:
            self.status.close(self, self.clock.monotonic())
        if self.fleet is not None:
            self.fleet.close()
        if self.refused is not None:
            self.exit_reason = str(self.refused)
            log.error("master stopped, exit %d: %s", self.refused.code, self.refused)
            return self.refused.code
        if self.only is not None:
            log.info("master stopped")
            return ONCE_EXIT.get(self.dispatcher.once_outcome or protocol.LOST,
                                 exitcodes.RET_LOST)
        if self.fleet is not None and self.fleet.keeper.lost:  # said by the exit status
            self.exit_reason = "; ".join(self.fleet.keeper.lost)
            log.error("master stopped, exit %d: %s", exitcodes.RET_HISTORY_LOST,
                      self.exit_reason)
            return exitcodes.RET_HISTORY_LOST
        log.info("master stopped")
        return exitcodes.RET_OK

    def turn(self) -> float | None:
        """One pass of the loop between two waits: act on what came in and what is due;
        the moment of the next event (None: stopped, nothing left to wait for)."""
        # every step below may take a moment (a spawn, a walk over /proc): each reads
        # the clock afresh rather than trust a reading taken before it
        self._handle_signals(self.clock.monotonic())
        self._apply_reload(self.clock.monotonic())
        if self.fleet is not None:
            self.fleet.check_deadlines(self.clock.monotonic())
        self.dispatcher.renew(self.clock.monotonic())
        self.dispatcher.pass_deadlines()
        now = self.clock.monotonic()
        self.dispatcher.fence(now)
        self.pool.check_deadlines(now)
        if self.pool.stopping and self.pool.empty and not self.containment.busy:
            return None
        if not self.pool.stopping:
            # hand due runs to idle workers first: a new worker cannot take one before it
            # is ready anyway, and its spawn (a fork) would delay the hand-over
            self.dispatcher.dispatch(self.clock.monotonic())
            # before the first run (database side not open yet): worker 1 boots alone, its
            # siblings' spawns and boots would delay it; they follow its first hand-over
            first = self.late is not None and not self.dispatcher.run_counter
            self.pool.fill(self.clock.monotonic(), upto=1 if first else None)
            self.dispatcher.warn_late(self.clock.monotonic())
        if self.late is not None and (self.dispatcher.run_counter or self.pool.stopping
                                      or self.clock.monotonic() >= self.started + LATE_LIMIT):
            # after the first hand-over (and the spawns), while that run's worker works
            self.open_late(self.clock.monotonic())
        # timers (history hand-over, heartbeats) may take a moment: measure the timeout
        # from after them, or the master would wake late by that much
        return self._next_event(self.clock.monotonic())

    def open_late(self, now: float) -> None:
        """Open the database side (``late``) and wire it in as ``fleet`` would have been."""
        late, self.late = self.late, None
        assert late is not None
        try:
            fleet = late.open()
        except StartupError as exc:  # the database refused it since the start's check
            self.refused = exc
            log.error("cannot go on: %s", exc)
            self.begin_stop(now)
            return
        from pandaserver.daemons.fleet.dbleases import DbLeases, DbRecorder

        self.fleet = fleet
        if self.controls.link is None:
            self.controls.link = FleetControl(fleet)
        if self.dispatcher.leases is late.leases:
            self.dispatcher.leases = self.dispatcher.keeper.leases = DbLeases(fleet)
        if self.dispatcher.recorder is late.runs:
            self.dispatcher.recorder = DbRecorder(fleet)
        late.runs.hand_over(fleet)
        # the command read before the fleet's tick, as at construction
        self.extra_events.insert(self.extra_events.index(self.controls.tick) + 1, fleet.tick)
        fleet.settings = self.settings
        fleet.defer_calls(True)

    def _next_event(self, now: float) -> float:
        times: list[float] = []
        self.dispatcher.next_event(now, times)
        explain = self.spin.explain  # None but in a spell of turns without a wait
        if explain is not None:
            explain.append(("the scripts' due times and held leases", min(times, default=math.inf)))
        before = len(times)
        self.pool.next_event(now, times)
        if explain is not None:
            explain.append(("the workers' deadlines", min(times[before:], default=math.inf)))
        for event in self.extra_events:
            when = event(now)
            if when is not None:
                times.append(when)
                if explain is not None:
                    explain.append((getattr(event, "__qualname__", repr(event)), when))
        if explain is not None:
            self.spin.report(now)
        return min(times)

    # ----- signals, stop and reload -------------------------------------------------------
    def _handle_signals(self, now: float) -> None:
        while self.signals.pending:
            signum = self.signals.pending.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.pool.stopping:
                    log.warning("second %s: killing what still runs", signal.Signals(signum).name)
                    self.pool.end_grace(now)
                else:
                    log.info("got %s: stopping", signal.Signals(signum).name)
                    self.begin_stop(now)
            elif signum == signal.SIGHUP:
                self._reload(now)
            elif signum in self.on_signal:
                self.on_signal[signum]()

    def begin_stop(self, now: float, grace: float | None = None) -> None:
        self.pool.stop(now, self.settings.stop_grace if grace is None else grace)

    def _reload(self, now: float) -> None:
        """SIGHUP: re-read and validate the config on a thread (the validation imports the
        script modules in a fresh interpreter: seconds, maybe); the loop applies the result
        when it comes back, and a SIGHUP meanwhile is served once that one is done."""
        if self.rereader is None or self.only is not None:
            log.info("got SIGHUP: nothing to reload")
            return
        self.rereader.start()

    def _apply_reload(self, now: float) -> None:
        if self.rereader is None or (new := self.rereader.take()) is None:
            return
        if isinstance(new, BaseException):
            log.error("reload refused, keeping the running configuration: %s", new)
        elif unusable := new.unusable():
            for problem in unusable:
                log.error("reload refused, keeping the running configuration: %s", problem)
        elif not self.pool.stopping:
            self.apply_settings(new, now)
        if self.rereader.again():
            self._reload(now)

    def apply_settings(self, new: DaemonSettings, now: float) -> None:
        """A re-read configuration, validated: applied without killing running scripts."""
        for problem in new.problems:
            log.error("%s", problem)
        scripts = self.dispatcher.scripts
        plan = reload.plan_reload(scripts, self._specs(new), list(self.pool.slots), new.n_proc,
                                  now)
        reload.apply_plan(plan, scripts, self.pool,
                          new.package if new.package != self.settings.package else None, now)
        for name, (spec, _) in plan.changed.items():
            if spec.sync:  # a shortened period: whoever asks next must not meet our finished
                self.dispatcher.release_finished(name)  # lease held until it expires
        self.settings = new
        if self.fleet is not None:
            self.fleet.settings = new
        reload.report(new, len(scripts), self.n_proc)


def worker_argv(server: str, log_level: str, log_file: str | None,
                config_path: str | None) -> list[str]:
    """The command-line options of every worker this master starts."""
    argv = ["--server-name", server, "--log-level", log_level]
    if log_file:
        argv += ["--log-file", log_file]
    if config_path:
        argv += ["--config", config_path]
    return argv

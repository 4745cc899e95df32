"""What the parts of the master share: its state, declared once (the ``Master`` sets it).

The master is one object on one thread, split by concern into mixins that can be read
alone: ``Supervising`` (workers: spawn, messages, exits, deadlines, fencing) and
``Dispatching`` (due scripts, leases, hand-over, outcomes); ``Master`` adds the loop,
signals and stop. Each mixin names here what it uses of the others.
"""

from __future__ import annotations

from collections.abc import Mapping

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base.clock import Clock
from pandaserver.daemons.base.runs import Recorder, Run
from pandaserver.daemons.containment.tracker import Containment
from pandaserver.daemons.fleet.contention import Contentions
from pandaserver.daemons.fleet.fleetdb import FleetDb
from pandaserver.daemons.fleet.keeper import LeaseKeeper
from pandaserver.daemons.fleet.leasemanager import LeaseManager
from pandaserver.daemons.master.crashloop import CrashLoops, SpawnLimiter
from pandaserver.daemons.master.pool import Slot
from pandaserver.daemons.master.schedule import LATE_FLOOR, ScriptState
from pandaserver.daemons.master.timetable import Timetable


class MasterCore:
    settings: DaemonSettings
    server: str
    clock: Clock
    fleet: FleetDb | None
    recorder: Recorder
    leases: LeaseManager
    keeper: LeaseKeeper
    containment: Containment
    only: str | None
    log_level: str
    worker_log_file: str | None
    config_path: str | None
    database: str | None  # the URL the master started with, for its workers' tbuf
    slots: dict[int, Slot]
    draining: list[Slot]
    stopping: bool
    stop_deadline: float
    once_outcome: str | None
    run_counter: int
    spawn_backoff: float
    spawn_not_before: float
    first_generation: bool
    last_outcomes: dict[str, tuple[str, float]]
    contention: Contentions  # refused lease attempts here, per sync script
    unimportable: set[str]
    started: float
    late_floor: float
    crashes: CrashLoops  # the rest of the operator's state is the Controlling part's own
    run_now: set[str]  # scripts an operator asked to run now (control.py)
    spawns: SpawnLimiter

    _scripts: Timetable

    @property
    def scripts(self) -> Timetable:
        """The scripts by name, in due-time heaps (a plain dict assigned is wrapped)."""
        return self._scripts

    @scripts.setter
    def scripts(self, states: Mapping[str, ScriptState]) -> None:
        self._scripts = states if isinstance(states, Timetable) else \
            Timetable(states, floor=getattr(self, "late_floor", LATE_FLOOR))

    def _specs(self, settings: DaemonSettings) -> dict[str, DaemonSpec]:
        """The scripts this master runs under ``settings``."""
        if self.only is not None:
            return {self.only: settings.scripts[self.only]}
        return {spec.name: spec for spec in settings.enabled_scripts}

    @property
    def n_proc(self) -> int:
        return 1 if self.only is not None else self.settings.n_proc

    # provided by the parts
    def begin_stop(self, now: float, grace: float | None = None) -> None:
        raise NotImplementedError

    def _finish_run(self, run: Run, outcome: str, error: str | None) -> None:
        raise NotImplementedError

    def _send_deadline(self, slot: Slot, deadline: float | None) -> None:
        raise NotImplementedError

    def _may_start(self, state: ScriptState, now: float) -> bool:
        raise NotImplementedError

    def _dispatched(self, name: str) -> None:
        raise NotImplementedError

    def _hold_back(self, state: ScriptState) -> None:
        raise NotImplementedError

    def _note_outcome(self, name: str, crashed: str | None, now: float) -> None:
        raise NotImplementedError

    def _preload(self) -> list[str]:
        raise NotImplementedError

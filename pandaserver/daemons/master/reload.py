"""Apply a re-read configuration to a running master without killing running scripts.

``plan_reload`` is pure: from the scripts the master knows, the new specs and ``now`` it
says what changes (a ``ReloadPlan``); ``apply_settings`` carries the plan out. Rules:
added scripts are due now; removed ones stop being scheduled (a running one finishes first,
so it never runs twice at once); changed ones keep their place in time, moved earlier when
the new period is shorter; fewer workers: the extra ones retire after their current run; a
new package replaces every worker so it is imported. What a running master cannot change (its
database, its user: ``new.restart_needed``) is logged as needing a restart, never as applied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base.states import WorkerState
from pandaserver.daemons.master.core import MasterCore
from pandaserver.daemons.master.schedule import REMOVED, ScriptState

log = logging.getLogger("panda.master")


@dataclass
class ReloadPlan:
    added: list[DaemonSpec] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # not running: forgotten now
    removed_after_run: list[str] = field(default_factory=list)  # running: kept until it ends
    added_back: list[DaemonSpec] = field(default_factory=list)  # removed, still running
    changed: dict[str, tuple[DaemonSpec, float]] = field(default_factory=dict)  # spec, next due
    module_changed: set[str] = field(default_factory=set)
    retire: list[int] = field(default_factory=list)  # worker slots above the new n_proc


def plan_reload(scripts: Mapping[str, ScriptState], new_specs: Mapping[str, DaemonSpec],
                slots: list[int], n_proc: int, now: float) -> ReloadPlan:
    plan = ReloadPlan()
    for name in scripts.keys() - new_specs.keys():
        if scripts[name].running is None and not scripts[name].acquiring:
            plan.removed.append(name)
        else:
            plan.removed_after_run.append(name)
    for name, spec in new_specs.items():
        state = scripts.get(name)
        if state is None:
            plan.added.append(spec)
        elif state.disabled == REMOVED:
            plan.added_back.append(spec)
        elif state.spec != spec:
            anchor = state.run_started if state.run_started is not None else now
            plan.changed[name] = (spec, min(state.next_due, anchor + spec.period))
            if state.spec.module != spec.module:
                plan.module_changed.add(name)
    plan.retire = sorted(index for index in slots if index > n_proc)
    return plan


def apply_settings(master: MasterCore, new: DaemonSettings, now: float) -> None:
    for problem in new.problems:
        log.error("%s", problem)
    plan = plan_reload(master.scripts, master._specs(new), list(master.slots), new.n_proc, now)
    for name in plan.removed:
        del master.scripts[name]
        log.info("reload: script %s removed", name)
    for name in plan.removed_after_run:  # not scheduled until its run ends
        master.scripts[name].disabled = REMOVED
        log.info("reload: script %s removed (after its run in progress)", name)
    for spec in plan.added:
        master.scripts[spec.name] = ScriptState(spec=spec, next_due=now)
        log.info("reload: script %s added", spec.name)
    for spec in plan.added_back:  # back while its old run still goes: it waits for it
        state = master.scripts[spec.name]
        state.disabled = None
        state.spec = spec
        log.info("reload: script %s added back", spec.name)
    for name, (spec, next_due) in plan.changed.items():
        state = master.scripts[name]
        if name in plan.module_changed:
            state.disabled = None
        state.next_due = next_due
        state.spec = spec
        log.info("reload: script %s changed", name)
    if new.package != master.settings.package:
        log.warning("reload: package changed to %s; workers are replaced to import it",
                    new.package)
        for slot in master.slots.values():
            slot.expires = now
    for index in plan.retire:
        slot = master.slots[index]
        if slot.state in (WorkerState.IDLE, WorkerState.STARTING):
            slot.ask_exit(now)
        elif slot.state is WorkerState.BUSY:
            slot.move(WorkerState.RETIRING)
    master.settings = new
    if master.fleet is not None:
        master.fleet.settings = new
    for change in new.restart_needed:
        log.warning("reload: NOT applied, needs a restart: %s", change)
    if new.restart_needed:
        log.info("reload: configuration applied except what needs a restart (%d scripts,"
                 " %d workers)", len(master.scripts), master.n_proc)
    else:
        log.info("reload: configuration applied (%d scripts, %d workers)",
                 len(master.scripts), master.n_proc)

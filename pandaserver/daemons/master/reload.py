"""Apply a re-read configuration to a running master without killing running scripts.

``plan_reload`` is pure: from the scripts the master knows, the new specs and ``now`` it
says what changes (a ``ReloadPlan``); ``apply_settings`` carries the plan out. Rules:
added scripts are due now; removed ones stop being scheduled (a running one finishes first,
so it never runs twice at once); changed ones keep their place in time, moved earlier when
the new period is shorter; fewer workers: the extra ones retire after their current run; a
new package replaces every worker so it is imported. What a running master cannot change (its
database, its user: ``new.restart_needed``) is logged as needing a restart, never as applied.

``apply_plan`` carries the plan out on the dispatcher's timetable (through its writers) and
the worker pool; the master's loop reads the new settings and wires the steps together.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master.schedule import REMOVED, ScriptState
from pandaserver.daemons.master.timetable import Timetable
from pandaserver.daemons.master.workers import WorkerPool

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
            # a cron script's due time is its firing's: placed from now (timetable.respec)
            plan.changed[name] = (spec, now if spec.cron is not None else
                                  min(state.next_due, anchor + spec.period))
            if state.spec.module != spec.module:
                plan.module_changed.add(name)
    plan.retire = sorted(index for index in slots if index > n_proc)
    return plan


def apply_plan(plan: ReloadPlan, scripts: Timetable, pool: WorkerPool,
               new_package: str | None, now: float) -> None:
    """Carry out ``plan`` on the timetable (through its writers) and the worker pool;
    ``new_package``: the script package, when the reload changed it."""
    for name in plan.removed:
        del scripts[name]
        log.info("reload: script %s removed", name)
    for name in plan.removed_after_run:  # not scheduled until its run ends
        scripts.disable(scripts[name], REMOVED)
        log.info("reload: script %s removed (after its run in progress)", name)
    for spec in plan.added:
        scripts[spec.name] = ScriptState(spec=spec, next_due=now)
        log.info("reload: script %s added", spec.name)
    for spec in plan.added_back:  # back while its old run still goes: it waits for it
        scripts.respec(scripts[spec.name], spec, enable=True)
        log.info("reload: script %s added back", spec.name)
    for name, (spec, next_due) in plan.changed.items():
        scripts.respec(scripts[name], spec, next_due, enable=name in plan.module_changed)
        log.info("reload: script %s changed", name)
    if new_package is not None:
        log.warning("reload: package changed to %s; workers are replaced to import it",
                    new_package)
        pool.expire_all(now)
    pool.retire(plan.retire, now)


def report(new: DaemonSettings, scripts: int, workers: int) -> None:
    """The reload's last lines: what needs a restart, and what is in force now."""
    for change in new.restart_needed:
        log.warning("reload: NOT applied, needs a restart: %s", change)
    if new.restart_needed:
        log.info("reload: configuration applied except what needs a restart (%d scripts,"
                 " %d workers)", scripts, workers)
    else:
        log.info("reload: configuration applied (%d scripts, %d workers)", scripts, workers)

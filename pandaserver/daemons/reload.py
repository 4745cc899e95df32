"""Apply a re-read configuration to a running master without killing running scripts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.schedule import REMOVED, ScriptState
from pandaserver.daemons.states import WorkerState

if TYPE_CHECKING:
    from pandaserver.daemons.master import Master

log = logging.getLogger("panda.master")


def apply_settings(master: Master, new: DaemonSettings, now: float) -> None:
    """Added scripts are due now; removed ones stop being scheduled (a running one finishes);
    changed ones keep their place in time, moved earlier if the new period is shorter.
    Fewer workers: the extra ones retire after their current run. What a running master
    cannot change (its database, its user: ``new.restart_needed``) is logged as needing a
    restart, never as applied."""
    for problem in new.problems:
        log.error("%s", problem)
    old_specs = {name: state.spec for name, state in master.scripts.items()}
    new_specs = master._specs(new)
    for name in old_specs.keys() - new_specs.keys():
        gone = master.scripts[name]
        if gone.running is None:
            del master.scripts[name]
        else:  # kept, not scheduled, until its run ends: it must not run twice at once
            gone.disabled = REMOVED
        log.info("reload: script %s removed", name)
    for name, spec in new_specs.items():
        state = master.scripts.get(name)
        if state is None:
            master.scripts[name] = ScriptState(spec=spec, next_due=now)
            log.info("reload: script %s added", name)
        elif state.disabled == REMOVED:  # back while its old run still goes: it waits
            state.disabled = None
            state.spec = spec
            log.info("reload: script %s added back", name)
        elif state.spec != spec:
            if state.spec.module != spec.module:
                state.disabled = None
            anchor = state.run_started if state.run_started is not None else now
            state.next_due = min(state.next_due, anchor + spec.period)
            state.spec = spec
            log.info("reload: script %s changed", name)
    if new.package != master.settings.package:
        log.warning("reload: package changed to %s; workers are replaced to import it",
                    new.package)
        for slot in master.slots.values():
            slot.expires = now
    for index, slot in master.slots.items():
        if index > new.n_proc:
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

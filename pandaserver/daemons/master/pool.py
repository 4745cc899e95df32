"""The master's worker slots: spawn, hand out assignments, retire, kill, replace."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pandaserver.config.secrets import registered
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.base.states import WorkerState, check_transition
from pandaserver.daemons.containment.processes import PendingKill, Spawned, begin_kill, spawn_worker
from pandaserver.daemons.containment.tracker import Containment, describe, processes

log = logging.getLogger("panda.master")

EXIT_GRACE = 10.0  # seconds a worker asked to exit has before it is killed


@dataclass
class Slot:
    index: int
    proc: Spawned
    born: float
    expires: float
    state: WorkerState = WorkerState.STARTING
    run: Run | None = None
    kill: PendingKill | None = None
    reserved: str | None = None  # idle, kept for a sync script whose lease is being asked
    exit_deadline: float | None = None
    conn_open: bool = True
    exited: bool = False
    returncode: int | None = None
    importing: str | None = None  # the module a starting worker said it is importing
    containment: Containment | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def move(self, new: WorkerState) -> None:
        self.state = check_transition(self.state, new)

    def send(self, op: str, **fields: Any) -> bool:
        if not self.conn_open:
            return False
        try:
            protocol.send(self.proc.conn, op, **fields)
        except OSError as exc:
            log.warning("worker %d (pid %d): cannot send %s: %s", self.index, self.pid, op, exc)
            self.conn_open = False
            return False
        return True

    def ask_exit(self, now: float) -> None:
        self.move(WorkerState.EXITING)
        self.exit_deadline = now + EXIT_GRACE
        self.send("exit")

    def start_kill(self, now: float, reason: str, grace: float = KILL_GRACE) -> None:
        if self.state is not WorkerState.KILLING:
            self.move(WorkerState.KILLING)
        if self.kill is None and not self.exited:
            log.warning("worker %d (pid %d): killing its process tree: %s",
                        self.index, self.pid, reason)
            run_procs = []  # the run's processes, those outside the worker's tree included
            if self.containment is not None and self.run is not None:
                run_procs = self.containment.run_processes(self.run)
                if run_procs:
                    log.warning("%s: ending its %s too: %s", self.run.label,
                                processes(len(run_procs)), describe(run_procs))
            self.kill = begin_kill(self.pid, now, grace, reason, [p.pid for p in run_procs])

    def reap(self) -> int:
        """The worker process has exited: collect its status and close our ends."""
        self.returncode = self.proc.popen.wait()
        self.exited = True
        self.conn_open = False
        self.proc.close()
        return self.returncode


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    return f"exited with status {code}"


def new_slot(index: int, now: float, lifetime: float, argv: list[str],
             package: str, modules: list[str], containment: Containment | None = None,
             database: str | None = None) -> Slot:
    """A started worker, sent its init: the script package, the modules to import first and
    ``database``, the URL of the master's database (with its password: it goes only through
    the worker's private pipe), which the scripts' ``tbuf`` uses whatever the config file
    says by now: a database changed by a reload needs a restart of the master, and until
    then its workers stay on the master's database."""
    proc = spawn_worker([*argv, "--index", str(index)])
    if containment is not None:  # its cgroup, before it is sent anything to run
        containment.worker_started(index, proc.pid)
    slot = Slot(index=index, proc=proc, born=now, expires=now + lifetime,
                containment=containment)
    # the secrets of the master's configuration: the worker's log lines hide them too
    slot.send("init", package=package, modules=modules, database=database,
              secrets=sorted(registered()))
    log.info("worker %d started (pid %d)", index, proc.pid)
    return slot


def staggered_lifetime(lifetime: float, position: int, count: int) -> float:
    """Workers started together get lifetimes spread over [lifetime/2, lifetime].

    Replacements get the full lifetime, so the spread persists and restarts never coincide.
    """
    if count <= 1:
        return lifetime
    return lifetime * (1.0 - 0.5 * position / count)

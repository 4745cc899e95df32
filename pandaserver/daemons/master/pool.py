"""One worker as the master sees it (``Slot``), and the process layer under it.

Every OS call the master makes about a worker (spawn, the kill of its tree, whether killed
processes are gone) goes through a ``ProcessLayer`` (``RealProcesses`` here; tests pass a
fake), and what the master asks of run containment through ``RunContainment``: so the
worker pool and the dispatcher decide in-process, without processes, under test.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from pandaserver.config.secrets import registered
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import KILL_GRACE, encode_deadline
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.base.states import WorkerState, check_transition
from pandaserver.daemons.containment import processes as oscalls
from pandaserver.daemons.containment.processes import PendingKill, Spawned
from pandaserver.daemons.containment.proctable import Proc
from pandaserver.daemons.containment.tracker import describe, processes

log = logging.getLogger("panda.master")

EXIT_GRACE = 10.0  # seconds a worker asked to exit has before it is killed


class ProcessLayer(Protocol):
    """The OS calls about workers (``containment.processes``), replaceable as one."""

    def spawn(self, argv: list[str]) -> Spawned: ...

    def begin_kill(self, pid: int, now: float, grace: float, reason: str,
                   extra: Iterable[int]) -> PendingKill: ...

    def finish_kill(self, pending: PendingKill) -> None: ...

    def any_alive(self, procs: list[psutil.Process]) -> bool: ...


class RealProcesses:
    def spawn(self, argv: list[str]) -> Spawned:
        return oscalls.spawn_worker(argv)

    def begin_kill(self, pid: int, now: float, grace: float, reason: str,
                   extra: Iterable[int]) -> PendingKill:
        return oscalls.begin_kill(pid, now, grace, reason, extra)

    def finish_kill(self, pending: PendingKill) -> None:
        oscalls.finish_kill(pending)

    def any_alive(self, procs: list[psutil.Process]) -> bool:
        return oscalls.any_alive(procs)


class RunContainment(Protocol):
    """What the master asks of ``containment.tracker.Containment``."""

    @property
    def busy(self) -> bool: ...

    def worker_started(self, index: int, pid: int) -> None: ...

    def worker_gone(self, pid: int) -> None: ...

    def run_processes(self, run: Run, known: set[int] | None = None) -> list[Proc]: ...

    def end_run(self, run: Run, then: Callable[[], None],
                deadline: float | None = None) -> None: ...

    def hurry(self, run_id: int) -> None: ...

    def tick(self, now: float) -> float | None: ...

    def reap(self) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


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
    containment: RunContainment | None = None
    layer: ProcessLayer | None = None  # the OS calls (None: the real ones)

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

    def send_deadline(self, deadline: float | None) -> None:
        """Tell the worker its run's hard lease deadline (None: no deadline); never blocks."""
        if self.exited:
            return
        try:
            os.write(self.proc.lifeline, encode_deadline(deadline))
        except (BlockingIOError, OSError) as exc:  # a full pipe: the worker is frozen
            log.warning("worker %d (pid %d): cannot pass its lease deadline: %s",
                        self.index, self.pid, exc)

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
            self.kill = (self.layer or _REAL).begin_kill(self.pid, now, grace, reason,
                                                      [p.pid for p in run_procs])

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
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by {name}"
    return f"exited with status {code}"


def new_slot(index: int, now: float, lifetime: float, argv: list[str],
             package: str, modules: list[str], containment: RunContainment | None = None,
             database: str | None = None, layer: ProcessLayer | None = None) -> Slot:
    """A started worker, sent its init: the script package, the modules to import first and
    ``database``, the URL of the master's database (with its password: it goes only through
    the worker's private pipe), which the scripts' ``tbuf`` uses whatever the config file
    says by now: a database changed by a reload needs a restart of the master, and until
    then its workers stay on the master's database."""
    proc = (layer or _REAL).spawn([*argv, "--index", str(index)])
    if containment is not None:  # its cgroup, before it is sent anything to run
        containment.worker_started(index, proc.pid)
    slot = Slot(index=index, proc=proc, born=now, expires=now + lifetime,
                containment=containment, layer=layer)
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


_REAL = RealProcesses()

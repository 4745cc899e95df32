"""Every process a run starts ends with the run, whichever way the run ends.

Three mechanisms, each covering what the one before cannot:

- **The master is a child subreaper** (``PR_SET_CHILD_SUBREAPER``): whatever a run starts
  stays below the master in the process tree, even after a double fork, a ``setsid`` or the
  death of its worker; such orphans become the master's children (it reaps them on SIGCHLD).
  So a run's processes are always found within the master's subtree, never under init.
- **A cgroup v2 per worker** where the master may create one (see ``cgroups``): exact
  membership; a worker runs one run at a time, so everything in its cgroup but the worker
  itself belongs to its current or last run.
- **Without a cgroup**: a worker's descendants and its session (the worker leads one), and
  for orphans the environment marker every run's processes inherit, ``PANDA_DAEMON_MASTER``
  (``<master pid>.<start ticks>``, set by the master for its workers) and
  ``PANDA_DAEMON_RUN`` (``<run id>:<script>``, set by the worker before ``main()``). An
  orphan that carries neither (a double fork with a cleared environment) is taken for the
  run during which it started: a run ending while another was running too may end such a
  process of the other run early, never late.

When a run ends (ok, failed, timeout, lost, fenced), ``end_run`` sends SIGTERM (and SIGCONT)
to whatever it left, logs each with pid and command line, SIGKILLs what is left after
``KILL_GRACE`` and calls back (release the lease, record the run) only once all are gone.
Nothing here blocks the master's loop: ``tick`` checks the pending clean-ups and returns when
it wants to be called again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.containment import cgroups, proctable
from pandaserver.daemons.containment.proctable import Proc

log = logging.getLogger("panda.master")

MASTER_VAR = "PANDA_DAEMON_MASTER"
RUN_VAR = "PANDA_DAEMON_RUN"
POLL = 0.05  # seconds between checks while a run's leftovers are ending
START_SLACK = 0.05  # process start times have a resolution of one clock tick (10 ms)
STUCK_WARNING = 10.0  # seconds after SIGKILL before processes still there are reported


def run_marker(run_id: int, script: str) -> str:
    return f"{run_id}:{script}"


def marked_run(pid: int, master: str) -> int | None:
    """The run ``pid`` was started by, from its environment, if it is ``master``'s."""
    if proctable.environ_value(pid, MASTER_VAR) != master:
        return None
    value = proctable.environ_value(pid, RUN_VAR) or ""
    head = value.partition(":")[0]
    return int(head) if head.isdigit() else None


def find_marked(master: str) -> list[Proc]:
    """Every live process carrying the marker of ``master`` (an identity ``<pid>.<start>``,
    or ``<pid>.`` for any master that had that pid): for ``stop`` and a dead master's
    workers, when the master's subtree is gone and its orphans can be anywhere."""
    me = os.getpid()
    prefix = master.endswith(".")
    running = proctable.identity_of(int(master.partition(".")[0])) if prefix else None
    found = []
    for proc in proctable.scan().values():
        if proc.pid != me and not proc.ended:
            value = proctable.environ_value(proc.pid, MASTER_VAR)
            if value is None or value == running:  # never a live master's processes
                continue
            if value == master or (prefix and value.startswith(master)):
                found.append(proc)
    return found


def processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def describe(procs: list[Proc]) -> str:
    parts = []
    for proc in sorted(procs, key=lambda p: p.pid):
        run = proctable.environ_value(proc.pid, RUN_VAR)
        left_by = f", run {run.replace(':', ' of ', 1)}" if run else ""
        parts.append(f"pid {proc.pid} ({proctable.cmdline(proc.pid)}{left_by})")
    return "; ".join(parts)


@dataclass
class _Worker:
    index: int
    pid: int
    cgroup: Path | None
    alive: bool = True
    gone_at: float = 0.0


@dataclass
class _Cleanup:
    run: Run
    procs: dict[str, Proc]
    deadline: float
    then: Callable[[], None]
    killed: bool = False
    warned: bool = False


@dataclass
class Containment:
    """The master's side: called when a worker starts or is gone, when a run ends, on
    SIGCHLD and from the loop (``tick``)."""

    monotonic: Callable[[], float] = time.monotonic
    grace: float = KILL_GRACE
    pid: int = field(default_factory=os.getpid)
    identity: str = ""
    subtree: cgroups.Subtree | None = None
    workers: dict[int, _Worker] = field(default_factory=dict)
    cleanups: list[_Cleanup] = field(default_factory=list)
    reap_wanted: bool = False

    # ----- set-up -------------------------------------------------------------------------
    def start(self) -> None:
        """Become the subreaper, mark the workers to come, make the cgroups if we may."""
        self.pid = os.getpid()
        self.identity = proctable.identity_of(self.pid) or str(self.pid)
        os.environ[MASTER_VAR] = self.identity  # workers inherit it, and all they start
        subreaper = proctable.set_child_subreaper()
        self.subtree = cgroups.prepare()
        how = (f"a cgroup per worker under {self.subtree.path}" if self.subtree is not None
               else f"no cgroups ({cgroups.reason()}): process tree, session and marker")
        log.info("containment: %s%s", how,
                 "" if subreaper else "; NOT a subreaper: orphans of runs go to init")

    @property
    def busy(self) -> bool:
        """Whether leftovers of an ended run are still being terminated."""
        return bool(self.cleanups)

    def worker_started(self, index: int, pid: int) -> None:
        """A new worker (before it gets its first run): into its own cgroup."""
        path = None
        if self.subtree is not None:
            try:
                path = self.subtree.add_worker(index, pid)
            except OSError as exc:
                log.warning("worker %d (pid %d): no cgroup of its own (%s): its runs are"
                            " tracked by process tree, session and marker", index, pid, exc)
        self.workers[pid] = _Worker(index=index, pid=pid, cgroup=path)

    def worker_gone(self, pid: int) -> None:
        """The worker has exited and been reaped."""
        worker = self.workers.get(pid)
        if worker is not None:
            worker.alive = False
            worker.gone_at = self.monotonic()
            self._forget_if_done(worker)

    def _forget_if_done(self, worker: _Worker) -> None:
        if worker.alive or any(c.run.pid == worker.pid for c in self.cleanups):
            return
        if self.subtree is None or worker.cgroup is None or self.subtree.drop_worker(worker.pid):
            del self.workers[worker.pid]

    # ----- which processes are a run's ----------------------------------------------------
    def run_processes(self, run: Run, known: set[int] | None = None) -> list[Proc]:
        """The live processes of ``run`` other than its worker (its worker is ``run.pid``).

        ``known``: pids found before. Looking again while the worker lives (it may run
        another run by then, in the same cgroup and session), only the marker and descent
        from ``known`` count. A process marked with another run is never this run's.
        The first look walks the process table only when the cheap check cannot say that
        nothing is there (``_surely_nothing_left``).
        """
        if known is None and self._surely_nothing_left(run):
            return []
        table = proctable.scan()
        kids = proctable.children_map(table)
        live_workers = {pid for pid, w in self.workers.items()
                        if w.alive and pid in table and not table[pid].ended}
        worker = self.workers.get(run.pid)
        alive = run.pid in live_workers
        narrow = known is not None and alive
        exact = worker is not None and worker.cgroup is not None  # its cgroup says it all
        own_cgroup: set[int] = set()
        if worker is not None and worker.cgroup is not None and not narrow:
            own_cgroup = set(cgroups.members(worker.cgroup))
        other_cgroups = {pid for w in self.workers.values() if w.cgroup and w.pid != run.pid
                         for pid in cgroups.members(w.cgroup)}
        others = live_workers - {run.pid}
        below_worker = proctable.descendants(kids, [run.pid]) if alive and not narrow else set()
        ours = proctable.descendants(kids, [self.pid])
        candidates = ours - proctable.descendants(kids, others) - live_workers - {run.pid}
        window = self._window(run)
        taken: set[int] = set()
        for pid in sorted(candidates):
            proc = table[pid]
            if proc.ended or pid in other_cgroups or proc.sid in others:
                continue
            marked = marked_run(pid, self.identity)
            if marked is not None:
                if marked == run.id:
                    taken.add(pid)
            elif pid in below_worker or pid in own_cgroup or (proc.sid == run.pid and not narrow):
                taken.add(pid)
            elif proc.ppid == self.pid and not exact and \
                    window[0] <= proc.started_boottime <= window[1]:
                taken.add(pid)  # an unmarked orphan that started while this run ran
        taken |= proctable.descendants(kids, taken | ((known or set()) & ours))
        claimed = {key for c in self.cleanups if c.run is not run for key in c.procs}
        return [table[pid] for pid in sorted(taken)  # not those another run's end is ending
                if pid in table and not table[pid].ended and pid not in live_workers
                and table[pid].identity not in claimed]

    def _surely_nothing_left(self, run: Run) -> bool:
        """The cheap check of the usual case, before a walk of the whole process table: the
        worker's cgroup holds the worker alone, or (without a cgroup, where the kernel lists
        children) the worker has no child and the master none but its workers."""
        worker = self.workers.get(run.pid)
        if worker is not None and worker.cgroup is not None:
            return set(cgroups.members(worker.cgroup)) <= {run.pid}
        below_worker = proctable.children_of(run.pid)
        below_master = proctable.children_of(self.pid)
        if below_worker is None or below_master is None:
            return False
        workers = {pid for pid, w in self.workers.items() if w.alive}
        return not below_worker and set(below_master) <= workers

    def _window(self, run: Run) -> tuple[float, float]:
        """The run's lifetime on the boot clock (process start times are on it)."""
        offset = proctable.boottime_offset()
        ended = run.ended if run.ended is not None else self.monotonic()
        return run.dispatched + offset - START_SLACK, ended + offset + START_SLACK

    # ----- a run ends ----------------------------------------------------------------------
    def end_run(self, run: Run, then: Callable[[], None], deadline: float | None = None) -> None:
        """``run`` is over: terminate what it left, then call ``then`` (at once if nothing).
        ``deadline``: SIGKILL by then at the latest (a sync run's lease deadline)."""
        procs = [] if self._surely_nothing_left(run) else self.run_processes(run)
        if not procs:
            self._after(run, then)
            return
        left = [proc for proc in procs if not proctable.dying(proc)]  # not those SIGKILLed
        if left:  # by the run's timeout kill a moment ago: they are as good as gone
            log.warning("%s left %s: SIGTERM now, SIGKILL in %g s: %s", run.label,
                        processes(len(left)), self.grace, describe(left))
            proctable.terminate(left)
        kill_at = self.monotonic() + self.grace
        self.cleanups.append(_Cleanup(run=run, procs={p.identity: p for p in procs},
                                      deadline=kill_at if deadline is None
                                      else min(kill_at, deadline), then=then))

    def hurry(self, run_id: int) -> None:
        """SIGKILL what ``run_id`` left at the next ``tick`` (its lease is about to expire)."""
        for cleanup in self.cleanups:
            if cleanup.run.id == run_id:
                cleanup.deadline = min(cleanup.deadline, self.monotonic())

    def _after(self, run: Run, then: Callable[[], None]) -> None:
        worker = self.workers.get(run.pid)
        if worker is not None:
            self._forget_if_done(worker)
        then()

    def tick(self, now: float) -> float | None:
        """Move the pending clean-ups on; the time to be called again (``now`` after one
        finished: the run's script may be due at once)."""
        if self.reap_wanted:
            self._reap_now()
        finished = False
        for cleanup in list(self.cleanups):
            if self._step(cleanup, now):
                self.cleanups.remove(cleanup)
                self._after(cleanup.run, cleanup.then)
                finished = True
        if finished:
            return now
        if not self.cleanups:
            self._sweep_dead_workers(now)
            return None
        return min([now + POLL, *(c.deadline for c in self.cleanups if not c.killed)])

    def _sweep_dead_workers(self, now: float) -> None:
        """A worker gone for longer than its run's end can take, with no run's end pending:
        anything still in its cgroup is a leftover nobody owns (SIGKILL); the cgroup goes
        once empty."""
        for worker in [w for w in self.workers.values()
                       if not w.alive and now >= w.gone_at + 2 * self.grace]:
            if worker.cgroup is not None and cgroups.members(worker.cgroup):
                log.warning("killing what is left in the cgroup of gone worker %d (pid %d): %s",
                            worker.index, worker.pid,
                            describe([p for p in map(proctable.stat,
                                                     cgroups.members(worker.cgroup)) if p]))
                cgroups.kill_all(worker.cgroup)
            self._forget_if_done(worker)

    @property
    def ending(self) -> list[Run]:
        """Runs whose leftovers are being ended: over for their scripts, not yet for their
        leases (which must be kept, renewed, until ``end_run`` calls back)."""
        return [cleanup.run for cleanup in self.cleanups]

    def _step(self, cleanup: _Cleanup, now: float) -> bool:
        """True once every process of the clean-up is gone."""
        alive = [proc for proc in cleanup.procs.values() if proctable.alive(proc)]
        if not alive or (now >= cleanup.deadline and not cleanup.killed):
            # all gone, or time for SIGKILL: look again for anything started meanwhile
            known = {p.pid for p in cleanup.procs.values()}
            new = [p for p in self.run_processes(cleanup.run, known)
                   if p.identity not in cleanup.procs]
            cleanup.procs.update((p.identity, p) for p in new)
            alive += new
            if not alive:
                return True
            if new and cleanup.killed:
                proctable.kill(new)
            elif new and now < cleanup.deadline:
                log.warning("%s: %s more appeared: SIGTERM: %s", cleanup.run.label,
                            processes(len(new)), describe(new))
                proctable.terminate(new)
        if now >= cleanup.deadline and not cleanup.killed:
            cleanup.killed = True
            log.warning("%s: %s still running %g s after SIGTERM: SIGKILL: %s",
                        cleanup.run.label, processes(len(alive)), self.grace, describe(alive))
            worker = self.workers.get(cleanup.run.pid)
            if worker is not None and not worker.alive and worker.cgroup is not None:
                cgroups.kill_all(worker.cgroup)  # atomic against a fork loop
            proctable.kill(alive)
        elif cleanup.killed and not cleanup.warned and now >= cleanup.deadline + STUCK_WARNING:
            cleanup.warned = True
            log.error("%s: processes still there %g s after SIGKILL (in the kernel, state D?);"
                      " its end waits for them: %s", cleanup.run.label, STUCK_WARNING,
                      describe(alive))
        return False

    # ----- orphans --------------------------------------------------------------------------
    def reap(self) -> None:
        """On SIGCHLD: ended orphans are to be collected, at the loop's next ``tick`` (once
        for however many SIGCHLDs came together)."""
        self.reap_wanted = True

    def _reap_now(self) -> None:
        """Collect ended orphans: the master's children that are not workers (a worker is
        collected by its ``Popen``; the master starts no other child)."""
        self.reap_wanted = False
        for proc in proctable.scan().values():
            if proc.ppid == self.pid and proc.ended and proc.pid not in self.workers:
                try:
                    os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def close(self, wait: float = KILL_GRACE) -> None:
        """At the master's exit, after its loop: end anything still below it (blocking, at
        most ``wait`` + a few seconds), then remove the cgroups."""
        table = proctable.scan()
        left = [table[pid] for pid in proctable.descendants(proctable.children_map(table),
                                                            [self.pid])
                if not table[pid].ended]
        if left:
            log.warning("%s left at the master's exit: SIGTERM, SIGKILL in %g s: %s",
                        processes(len(left)), wait, describe(left))
            end_now(left, wait)
        self._reap_now()
        if self.subtree is not None:
            self.subtree.close()


_PAUSE = threading.Event()  # never set: a sleep


def end_now(procs: list[Proc], grace: float, kill_wait: float = 5.0) -> list[Proc]:
    """SIGTERM, wait up to ``grace``, SIGKILL, wait up to ``kill_wait``: blocking, for the
    master's exit and ``stop`` only. Returns those still there."""
    proctable.terminate(procs)
    for sig_wait, final in ((grace, False), (kill_wait, True)):
        deadline = time.monotonic() + sig_wait
        while (alive := [p for p in procs if proctable.alive(p)]) and time.monotonic() < deadline:
            _PAUSE.wait(0.05)  # not time.sleep: libfaketime (the skew tests) breaks it
        if not alive or final:
            return alive
        proctable.kill(alive)
    return []

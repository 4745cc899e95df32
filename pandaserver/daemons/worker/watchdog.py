"""The worker's own guard: the lifeline pipe from its master, and the lease deadline it carries.

The master holds the only write end of the lifeline. End-of-file means the master is gone
(even by SIGKILL): the worker kills its whole tree at once. While a sync run holds a lease,
the master writes the run's hard deadline (8 bytes, a float on the shared monotonic clock;
``inf`` for none) and writes it again after every confirmed renewal. If the deadline passes
with no newer one, the master could not renew in time or could not act (stopped, frozen,
starved), so the worker acts alone: SIGTERM to the run's other processes ``kill_grace``
seconds before the deadline, SIGKILL to all of them and itself at the deadline, so nothing
of the run outlives its lease (see ``fencing.py``).
"""

from __future__ import annotations

import math
import os
import select
import signal
import threading
import time

from pandaserver.daemons.base.lifeline import RECORD
from pandaserver.daemons.containment import cgroups, proctable
from pandaserver.daemons.containment.tracker import MASTER_VAR, RUN_VAR

CHANNEL_WAIT = 5.0  # seconds a closed channel waits for the lifeline to show the master gone
SWEEP_PASSES = 3
_PAUSE = threading.Event()  # never set: a sleep that libfaketime does not break


def _trees_and_sessions(table: dict[int, proctable.Proc], roots: set[int]) -> set[int]:
    """Every descendant of ``roots`` and every member of a session one of them leads."""
    found = proctable.descendants(proctable.children_map(table), roots)
    return found | {pid for pid, proc in table.items() if proc.sid in roots}


def run_processes() -> list[proctable.Proc]:
    """The processes of this worker's run but the worker: its tree, its session, and
    whatever carries the run's marker (double forks, setsid daemons)."""
    me = os.getpid()
    table = proctable.scan()
    victims = _trees_and_sessions(table, {me})
    marker = os.environ.get(RUN_VAR)
    if marker:
        victims |= {pid for pid in table if proctable.environ_value(pid, RUN_VAR) == marker}
    return [table[pid] for pid in victims - {me} if pid in table]


def end_the_run() -> None:
    """The lease deadline passed: SIGKILL the run's processes, the worker's cgroup (which
    holds only this worker's run), and the worker itself."""
    proctable.kill(run_processes())
    own = cgroups.cgroup_of()
    if own is not None and own.name.startswith("worker-"):
        cgroups.kill_all(own)
    os.kill(os.getpid(), signal.SIGKILL)


_SWEEP = threading.Lock()  # taken by the first thread to see the master gone, never released


def master_gone() -> None:
    """The master is gone: kill everything this worker and its master's runs left. Never
    returns; a second thread that gets here waits for the first to end the process."""
    _SWEEP.acquire()
    _sweep_and_die()


def _sweep_and_die() -> None:
    try:
        sweep_after_master()
    finally:
        os.killpg(os.getpgid(0), signal.SIGKILL)
        os._exit(1)  # not reached unless we are not in our own group


def gone(fd: int, timeout: float = 0.0) -> bool:
    """Whether the lifeline ``fd`` shows its master gone (its write end closed), waiting up to
    ``timeout`` for it; reads nothing, so the lifeline thread misses no deadline. False for
    a descriptor that is not open any more (a script closed it): nothing can be known."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            events = poller.poll(max(0, int(remaining * 1000)))
        except InterruptedError:
            continue
        flags = 0
        for _, each in events:
            flags |= each
        if flags & select.POLLNVAL:
            return False
        if flags & (select.POLLHUP | select.POLLERR):
            return True
        if remaining <= 0:
            return False
        if events:  # a deadline not read yet by the lifeline thread: it soon is
            _PAUSE.wait(0.01)


def before_exit(fd: int, channel_closed: bool) -> None:
    """Called by the worker's main thread before the process exits (any way but a signal).

    A master that dies closes the worker's channel and its lifeline together: a worker that
    then simply exited could cut short the sweep its lifeline thread has begun, and another
    worker's run would keep its children. So a closed channel is first checked against the
    lifeline (up to ``CHANNEL_WAIT`` seconds) and, with the master gone, this thread sweeps.
    Otherwise the sweep lock is taken before the exit: a sweep under way ends this process
    first, and none can start halfway through the exit."""
    if gone(fd, CHANNEL_WAIT if channel_closed else 0.0):
        master_gone()
    _SWEEP.acquire()  # waits for ever while the lifeline thread sweeps (it kills us)
    if gone(fd):  # the master died meanwhile
        _sweep_and_die()


def sweep_after_master(master: str | None = None) -> None:
    """In a worker whose master is gone (its lifeline closed), SIGKILL:

    1. every process of this worker's tree and session and of every process carrying the
       master's marker (the other workers and what their runs left, even with a cleared
       environment), the runs' processes before the workers (a worker killed halfway
       through its own sweep leaves nothing unswept), and again until a pass finds nothing
       new (what was forked during the last pass);
    2. with cgroups, the dead master's whole subtree at once (every worker and everything
       any of its runs left, however started), this worker included; where that write is
       not allowed, each worker's cgroup, this worker's last;
    3. without cgroups, this worker's process group.
    """
    me = os.getpid()
    master = master if master is not None else os.environ.get(MASTER_VAR)
    killed: set[str] = set()
    for _ in range(SWEEP_PASSES):
        table = proctable.scan()
        marked = {pid for pid in table
                  if master and proctable.environ_value(pid, MASTER_VAR) == master}
        roots = marked | {me}
        victims = _trees_and_sessions(table, roots) | marked
        found = [table[pid] for pid in victims - {me}
                 if pid in table and table[pid].identity not in killed]
        if not found:
            break
        workers = {pid for pid in marked if proctable.environ_value(pid, RUN_VAR) is None}
        proctable.kill(sorted(found, key=lambda p: p.pid in workers))
        killed.update(proc.identity for proc in found)
    own = cgroups.cgroup_of()
    if own is None or not own.name.startswith("worker-") or \
            not own.parent.name.startswith(cgroups.PREFIX):
        return
    if master and own.parent.name == cgroups.PREFIX + master.replace(".", "-"):
        if cgroups.kill_all(own.parent):  # the dead master's own subtree, never a live one's
            return
        for sibling in own.parent.glob("worker-*"):
            if sibling != own:
                cgroups.kill_all(sibling)
    cgroups.kill_all(own)


def watch_lifeline(fd: int, kill_grace: float) -> None:
    """Run on a thread of the worker for its whole life."""
    deadline = math.inf
    warned = False
    pending = b""
    while True:
        now = time.monotonic()
        if now >= deadline:
            os.write(2, b"panda_daemon worker: lease deadline passed with no renewal from the"
                        b" master: killing the run's processes\n")
            end_the_run()
        if not warned and now >= deadline - kill_grace:
            proctable.terminate(run_processes())
            warned = True
        timeout: float | None = None
        if deadline != math.inf:
            timeout = max(0.0, (deadline if warned else deadline - kill_grace) - now)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:  # the master is gone
            master_gone()
        pending += data
        whole = len(pending) - len(pending) % RECORD.size
        if whole:
            (deadline,) = RECORD.unpack_from(pending, whole - RECORD.size)  # the newest
            pending = pending[whole:]
            warned = False

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
import struct
import time

from pandaserver.daemons import cgroups, proctable
from pandaserver.daemons.containment import RUN_VAR, sweep_after_master

RECORD = struct.Struct("<d")


def encode_deadline(deadline: float | None) -> bytes:
    return RECORD.pack(math.inf if deadline is None else deadline)


def run_processes() -> list[proctable.Proc]:
    """The processes of this worker's run but the worker: its tree, its session, and
    whatever carries the run's marker (double forks, setsid daemons)."""
    me = os.getpid()
    table = proctable.scan()
    victims = proctable.descendants(proctable.children_map(table), [me])
    victims |= {pid for pid, proc in table.items() if proc.sid == me}
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


def master_gone() -> None:
    """End-of-file on the lifeline: kill everything this worker and its master's runs left."""
    sweep_after_master()
    os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(1)  # not reached unless we are not in our own group


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

"""Every OS call about child processes: spawn, process groups, process trees, kills.

Workers are started with ``subprocess.Popen`` of a fresh interpreter, so nothing the master
opened (database connections included) is inherited. Each worker leads its own process group
(so a timeout kills the script's children too) and holds the read end of a *lifeline* pipe
whose write end only the master holds: when the master dies, even by SIGKILL, the pipe reports
end-of-file and the worker kills its whole tree and every process marked as its master's (see
``watchdog.watch_lifeline`` and ``watchdog.sweep_after_master`` of the worker). Which
processes belong to which run, and their end when the run ends, is ``tracker``'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import psutil

from pandaserver.daemons.containment import proctable


@dataclass
class Spawned:
    """A freshly started worker process and the master's ends of its channels."""

    popen: subprocess.Popen[bytes]
    conn: Connection
    pidfd: int
    lifeline: int
    conn_fd: int = -1

    @property
    def pid(self) -> int:
        return self.popen.pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        for fd in (self.pidfd, self.lifeline):
            with contextlib.suppress(OSError):
                os.close(fd)


def spawn_worker(argv: list[str], env: dict[str, str] | None = None) -> Spawned:
    """Start ``python -m pandaserver.daemons.worker ARGV --fd N --lifeline M``."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    life_r, life_w = os.pipe()
    os.set_inheritable(life_w, False)
    os.set_blocking(life_w, False)  # the master writes lease deadlines; it never waits
    child_fd = child_sock.fileno()
    command = [
        sys.executable,
        "-m",
        "pandaserver.daemons.worker",
        *argv,
        "--fd",
        str(child_fd),
        "--lifeline",
        str(life_r),
    ]
    # SPT_NOENV: the process title must not overwrite the environment as /proc shows it, for
    # a script's forked (not exec'd) children show the worker's, marker included
    env = {**(os.environ if env is None else env), "SPT_NOENV": "1"}
    try:
        popen = subprocess.Popen(
            command,
            pass_fds=(child_fd, life_r),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        parent_sock.close()
        os.close(life_w)
        raise
    finally:
        child_sock.close()
        os.close(life_r)
    conn = Connection(parent_sock.detach())
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:
        popen.kill()  # closing the lifeline alone would do; do not leave it to chance
        popen.wait()
        conn.close()
        os.close(life_w)
        raise
    return Spawned(popen=popen, conn=conn, pidfd=pidfd, lifeline=life_w, conn_fd=conn.fileno())


def tree_of(pid: int) -> list[psutil.Process]:
    """The process and all its descendants, plus anything left in its process group."""
    pids = _tree_below_us(pid)
    if pids is None:
        return _tree_by_walk(pid)
    found = []
    for member in [pid, *sorted(pids - {pid})]:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(member))
    return found


def _tree_below_us(pid: int) -> set[int] | None:
    """``tree_of`` without a walk of the whole process table, when ``pid`` is below this
    process and this process is a subreaper: then whatever ``pid``'s group left (orphans
    included) is still in our subtree, which the kernel lists child by child. None when
    that cannot be said."""
    if not proctable.is_child_subreaper():
        return None
    ours = proctable.subtree(os.getpid())
    below = proctable.subtree(pid)
    if ours is None or below is None or pid not in ours:
        return None
    for other in ours - below - {os.getpid()}:
        with contextlib.suppress(OSError):
            if os.getpgid(other) == pid:
                below.add(other)
    return below


def _tree_by_walk(pid: int) -> list[psutil.Process]:
    """``tree_of`` by a walk of every process."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    except psutil.Error:
        pass
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in found and os.getpgid(proc.pid) == pid:
                found[proc.pid] = proc
    return list(found.values())


def signal_tree(procs: list[psutil.Process], sig: signal.Signals) -> list[psutil.Process]:
    """Send ``sig`` to every process still alive; return those that were."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                proc.send_signal(sig)
                alive.append(proc)
    return alive


def any_alive(procs: list[psutil.Process]) -> bool:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


@dataclass
class PendingKill:
    """A tree sent SIGTERM; whatever is left at ``deadline`` gets SIGKILL."""

    procs: list[psutil.Process]
    deadline: float
    reason: str
    killed: bool = field(default=False)


def begin_kill(pid: int, now: float, grace: float, reason: str,
               extra: Iterable[int] = ()) -> PendingKill:
    """Politely stop a worker's whole tree, and the ``extra`` processes of its run that left
    the tree; the caller finishes it with ``finish_kill``."""
    procs = tree_of(pid)
    seen = {proc.pid for proc in procs}
    for other in extra:
        if other not in seen:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(other))
    signal_tree(procs, signal.SIGTERM)
    if grace <= 0:
        signal_tree(procs, signal.SIGKILL)
    return PendingKill(procs=procs, deadline=now + grace, reason=reason, killed=grace <= 0)


def finish_kill(pending: PendingKill) -> None:
    """SIGKILL what survived the polite stop, and anything those processes started since."""
    procs = list(pending.procs)
    for proc in pending.procs:
        with contextlib.suppress(psutil.Error):
            procs.extend(proc.children(recursive=True))
    signal_tree(procs, signal.SIGKILL)
    pending.procs = procs
    pending.killed = True


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a hard dependency, but titles are cosmetic
        return
    setproctitle.setproctitle(f"panda_daemon: {title}")

"""``stop``, ``status`` and signals to a running master, found by its pid-file lock.

The master is the process the kernel says holds the lock on the pid file (never merely the
pid written in it, which may be stale or reused). Workers lead their own process groups, so
``stop`` tracks the master's whole family: its descendants and every process in a group
that is theirs (see ``_own_group``), and, once the master is gone, whatever its runs left
anywhere: every process carrying its marker, and every process in its cgroups (see
``pandaserver.daemons.containment.tracker``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import psutil

from pandaserver import exitcodes
from pandaserver.daemons.containment import cgroups, proctable
from pandaserver.daemons.containment import tracker as containment
from pandaserver.service.pidfile import exit_note, lock_holder, read_pid, remove_stale

LEFTOVER_GRACE = 3.0  # seconds the family has to end after the master, before SIGKILL
KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to vanish
_WORKER_TITLE = re.compile(r"panda_daemon: worker (\d+) (.*)")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _family(master: psutil.Process) -> dict[int, psutil.Process]:
    """The master, its descendants, and everything in their own process groups."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        found[master.pid] = master
        for child in master.children(recursive=True):
            found[child.pid] = child
    groups = {group for pid in found if (group := _own_group(pid, found)) is not None}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid not in found and proc.pid != os.getpid() and \
                    os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
    return found


def _own_group(pid: int, family: Mapping[int, psutil.Process]) -> int | None:
    """The process group of ``pid`` when it belongs to the family: led by one of its
    processes (a worker's), or with its leader gone (the group python-daemon's double fork
    leaves the master in). A group led by anything else (the shell that ran
    ``start --no-detach``) is not the family's, and is never killed."""
    try:
        group = os.getpgid(pid)
    except OSError:
        return None
    if group in (0, 1, os.getpgrp()):
        return None
    if group in family or not psutil.pid_exists(group):
        return group
    return None


def _not_running(pidfile: Path, out: TextIO) -> int:
    """Say why no master runs; 1 for a stale pid file, 3 for none (LSB status codes)."""
    if not pidfile.exists():
        out.write(f"panda-daemon is not running (no pid file {pidfile})\n")
        return exitcodes.RET_NOT_RUNNING
    stale = read_pid(pidfile)
    named = f"names pid {stale}" if stale is not None else "names no pid"
    out.write(f"panda-daemon is not running: the pid file {pidfile} is stale (it {named},"
              " and no process holds its lock)\n")
    note = exit_note(pidfile)
    if note is not None:
        out.write(f"its master exited with status {note[0]}: {note[1]}\n")
    return exitcodes.RET_STALE_PIDFILE


def _master(pidfile: Path) -> psutil.Process | None:
    holder = lock_holder(pidfile)
    if holder is None or holder < 0:
        return None
    try:
        return psutil.Process(holder)
    except psutil.NoSuchProcess:
        return None


# ----- status -----------------------------------------------------------------------------
def status(pidfile: Path, out: TextIO) -> int:
    master = _master(pidfile)
    if master is None:
        if lock_holder(pidfile) == -1:
            out.write(f"panda-daemon is running in another pid namespace (pid file {pidfile})\n")
            return exitcodes.RET_OK
        if _foreground_masters(pidfile, out):
            return exitcodes.RET_OK
        return _not_running(pidfile, out)
    try:
        with master.oneshot():
            user = master.username()
            started = master.create_time()
            children = master.children()
    except psutil.Error as exc:
        out.write(f"panda-daemon: cannot inspect the master (pid {master.pid}): {exc}\n")
        return exitcodes.RET_OK
    out.write(f"panda-daemon is running: master pid {master.pid} as {user}, up"
              f" {_duration(time.time() - started)} (pid file {pidfile})\n")
    published = _published_status(master.pid)
    if published is not None:  # what each worker runs, and when each script is next due
        out.write(published)
        return exitcodes.RET_OK
    workers = sorted(filter(None, (_describe_worker(child) for child in children)))
    for _, line in workers:
        out.write(f"  {line}\n")
    if not workers:
        out.write("  no workers running\n")
    return exitcodes.RET_OK


def _foreground_masters(pidfile: Path, out: TextIO) -> bool:
    """Report the live masters of this host that hold no pid file (started with ``run``),
    found by their status files; False when there is none."""
    try:
        from pandaserver.service.hoststatus import local_masters, render_local_status
    except ImportError:
        return False
    found = False
    for data in local_masters():
        pid = data.get("pid")
        if not data.get("master_alive") or not isinstance(pid, int) or not _is_master(pid):
            continue
        found = True
        out.write(f"panda-daemon is running in the foreground (started with `run`, so it holds"
                  f" no pid file; {pidfile} is not its): master pid {pid}, server"
                  f" {data.get('server', '?')}. `stop` does not reach it: stop it where it"
                  f" runs (Ctrl-C) or with kill -TERM {pid}\n")
        out.write(render_local_status(data))
    return found


def _is_master(pid: int) -> bool:
    """The process ``pid`` is a panda-daemon master (not a process that reused the pid)."""
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "panda" in command and "pandaserver.daemons.worker" not in command


def _published_status(pid: int) -> str | None:
    """The status file the master ``pid`` writes (pandaserver.daemons.master.statusfile), rendered."""
    try:
        from pandaserver.service.hoststatus import local_masters, render_local_status
    except ImportError:
        return None
    for data in local_masters():
        if data.get("pid") == pid:
            return render_local_status(data)
    return None


def _describe_worker(proc: psutil.Process) -> tuple[int, str] | None:
    try:
        words = [word for word in proc.cmdline() if word]
    except psutil.Error:
        return None
    title = " ".join(words).strip()
    match = _WORKER_TITLE.match(title)
    if match:
        return int(match.group(1)), f"worker {match.group(1)} (pid {proc.pid}): {match.group(2)}"
    if "pandaserver.daemons.worker" in words and "--index" in words[:-1]:
        index = words[words.index("--index") + 1]
        if index.isdigit():
            return int(index), f"worker {index} (pid {proc.pid}): starting"
    return None


def _duration(seconds: float) -> str:
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{days}d {text}" if days else text


# ----- signals ----------------------------------------------------------------------------
def send_signal(pidfile: Path, signum: signal.Signals, what: str, out: TextIO,
                err: TextIO) -> int:
    """Send ``signum`` to the master; ``what`` says what it will do."""
    master = _master(pidfile)
    if master is None:
        _not_running(pidfile, err)
        return exitcodes.RET_NOT_RUNNING
    try:
        master.send_signal(signum)
    except psutil.AccessDenied:
        err.write(_not_allowed(master, "signal"))
        return exitcodes.RET_FAILED
    except psutil.NoSuchProcess:
        _not_running(pidfile, err)
        return exitcodes.RET_NOT_RUNNING
    out.write(f"sent {signum.name} to the master (pid {master.pid}): {what}\n")
    return exitcodes.RET_OK


def _not_allowed(master: psutil.Process, doing: str) -> str:
    try:
        user = str(master.username())
    except psutil.Error:
        user = "?"
    return (f"panda-daemon: not allowed to {doing} the master (pid {master.pid}, user {user}):"
            " run this as root or as that user\n")


# ----- stop -------------------------------------------------------------------------------
def stop(pidfile: Path, timeout: float, out: TextIO, err: TextIO) -> int:
    """SIGTERM, wait ``timeout`` s for the graceful stop, then SIGKILL the master's process
    group and every process of its family; 0 only when all of them are gone."""
    master = _master(pidfile)
    if master is None:
        if lock_holder(pidfile) == -1:
            err.write(f"panda-daemon: the master holding {pidfile} is in another pid namespace;"
                      " stop it from there\n")
            return exitcodes.RET_FAILED
        stale = read_pid(pidfile)
        note = exit_note(pidfile)
        if pidfile.exists() and remove_stale(pidfile, stale):
            out.write(f"panda-daemon is not running; removed the stale pid file {pidfile}"
                      f" (it named pid {stale}, which held no lock)\n")
        else:
            out.write("panda-daemon is not running\n")
        code = exitcodes.RET_OK
        if stale is not None:  # what the runs of that dead master left, if anything
            code = _end_leftovers({}, f"{stale}.", None, 0.0, out, err)
        return _reported(note, code, err)
    identity = proctable.identity_of(master.pid) or f"{master.pid}."  # its runs' marker
    subtree = cgroups.master_subtree(master.pid)
    family = _family(master)
    master_group = _own_group(master.pid, family)
    try:
        master.send_signal(signal.SIGTERM)
    except psutil.AccessDenied:
        err.write(_not_allowed(master, "stop"))
        return exitcodes.RET_FAILED
    except psutil.NoSuchProcess:
        pass
    out.write(f"stopping panda-daemon (master pid {master.pid})...\n")
    out.flush()
    deadline = time.monotonic() + timeout
    while _alive(master) and time.monotonic() < deadline:
        family.update(_family(master))
        _wait_gone([master], min(0.5, deadline - time.monotonic()))
    if _alive(master):
        family.update(_family(master))
        out.write(f"the master did not stop within {timeout:g} s: killing its process group"
                  f" and its workers (SIGKILL)\n")
        _kill(family, master_group)
    # workers and script children end with the master; give stragglers a moment
    if _end_leftovers(family, identity, subtree, LEFTOVER_GRACE, out, err) != exitcodes.RET_OK:
        err.write(f"panda-daemon: the pid file {pidfile} is kept\n")
        return exitcodes.RET_FAILED
    # A killed process can look a zombie while its other threads still exit: its lock (and
    # so the pid file) is free only once the last thread is gone.
    deadline = time.monotonic() + KILL_WAIT
    while lock_holder(pidfile) == master.pid and time.monotonic() < deadline:
        time.sleep(0.05)
    if subtree is not None:
        _remove_subtree(subtree, deadline)
    note = exit_note(pidfile) if read_pid(pidfile) == master.pid else None
    remove_stale(pidfile, master.pid)
    out.write(f"panda-daemon stopped (master pid {master.pid})\n")
    return _reported(note, exitcodes.RET_OK, err)


def _reported(note: tuple[int, str] | None, code: int, err: TextIO) -> int:
    """The status ``stop`` ends with: a failure the master left in its pid file (history it
    lost at its stop, say: ``PidFile.release``) is said and returned, else ``code``."""
    if note is None or code != exitcodes.RET_OK:
        return code
    err.write(f"panda-daemon: the master exited with status {note[0]}: {note[1]}\n")
    return note[0]


def _end_leftovers(family: dict[int, psutil.Process], identity: str, subtree: Path | None,
                   grace: float, out: TextIO, err: TextIO) -> int:
    """After the master: wait ``grace`` s for its family to end by itself, then SIGKILL, and
    name, every process of the family, marked with ``identity`` or in the master's cgroups
    (``subtree``); 0 once all are gone, 1 (naming them) otherwise."""
    def leftovers() -> dict[int, psutil.Process]:
        found = {pid: proc for pid, proc in family.items() if _alive(proc)}
        pids = [proc.pid for proc in containment.find_marked(identity)]
        pids += cgroups.subtree_processes(subtree) if subtree is not None else []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                found.setdefault(pid, psutil.Process(pid))
        return {pid: proc for pid, proc in found.items() if _alive(proc)}

    deadline = time.monotonic() + grace
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        named = containment.describe([p for p in map(proctable.stat, left) if p is not None])
        out.write(f"killing {containment.processes(len(left))} left after the master"
                  f" (SIGKILL): {named}\n")
        _kill(left, None)
    alive = _wait_gone(list(left.values()), KILL_WAIT)
    if alive:
        err.write(f"panda-daemon: processes still running after SIGKILL: {_pids(alive)}\n")
        return exitcodes.RET_FAILED
    return exitcodes.RET_OK


def _remove_subtree(subtree: Path, deadline: float) -> None:
    """Remove the master's cgroups once their last task has left: an exiting process's
    other threads keep its cgroup busy after the process looks a zombie. Retried while a
    task is still in them, until ``deadline``; not at all when they cannot be removed for
    another reason (a ``stop`` run as the service user, say): the next master removes what
    is left (``cgroups.remove_stale``)."""
    while not cgroups.remove(subtree) and cgroups.populated(subtree) \
            and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process has ended (zombies count as ended); return those left."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [proc for proc in procs if _alive(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _kill(family: dict[int, psutil.Process], group: int | None) -> None:
    if group is not None:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for proc in family.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _pids(procs: list[psutil.Process]) -> str:
    return ", ".join(str(proc.pid) for proc in sorted(procs, key=lambda p: p.pid))

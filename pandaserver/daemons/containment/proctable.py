"""The process table, read straight from ``/proc``: cheap enough to walk on every run's end.

A process is named by its pid *and* its start time (clock ticks since boot): a pid can be
reused, the pair cannot. Signals go through a pidfd opened after checking the start time, so
a process that ended (and whose pid was reused) is never signalled by mistake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

PROC = "/proc"
TICKS = os.sysconf("SC_CLK_TCK")
GONE_STATES = frozenset("ZX")  # zombie, dead: ended, whatever their parent does about it


@dataclass(frozen=True, slots=True)
class Proc:
    """One process as ``/proc/PID/stat`` showed it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks since boot: with the pid, the process's identity
    state: str

    @property
    def identity(self) -> str:
        return f"{self.pid}.{self.start}"

    @property
    def ended(self) -> bool:
        return self.state in GONE_STATES

    @property
    def started_boottime(self) -> float:
        """Seconds since boot (CLOCK_BOOTTIME) when it started."""
        return self.start / TICKS


def stat(pid: int) -> Proc | None:
    """The process ``pid``, or None when there is none."""
    data = _read(f"{PROC}/{pid}/stat")
    return None if data is None else _parse(pid, data)


def _read(path: str, whole: bool = False) -> bytes | None:
    """A /proc file: one read (its first 16 KiB) or all of it (os.read: a third of the cost
    of open())."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 16384)
        if whole and data:
            parts = [data]
            while chunk := os.read(fd, 65536):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse(pid: int, data: bytes) -> Proc | None:
    # the command name (field 2) is in parentheses and may hold spaces and parentheses
    end = data.rfind(b")")
    fields = data[end + 2:].split()
    if end < 0 or len(fields) < 20:
        return None
    return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                start=int(fields[19]), state=fields[0].decode("ascii", "replace"))


def scan() -> dict[int, Proc]:
    """Every process on the machine (zombies included; see ``Proc.ended``)."""
    table: dict[int, Proc] = {}
    with os.scandir(PROC) as entries:
        for entry in entries:
            if entry.name.isdigit():
                proc = stat(int(entry.name))
                if proc is not None:
                    table[proc.pid] = proc
    return table


def children_map(table: dict[int, Proc]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    return children


def descendants(children: dict[int, list[int]], roots: Iterable[int]) -> set[int]:
    """Every descendant of ``roots`` (the roots themselves not included)."""
    found: set[int] = set()
    todo = [kid for root in roots for kid in children.get(root, ())]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def children_of(pid: int) -> list[int] | None:
    """The children of ``pid`` from ``/proc/PID/task/*/children`` (a few small reads), or
    None where the kernel does not have that file (CONFIG_PROC_CHILDREN)."""
    try:
        tasks = os.listdir(f"{PROC}/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        data = _read(f"{PROC}/{pid}/task/{task}/children", whole=True)
        if data is None:
            if not os.path.exists(f"{PROC}/{pid}/task/{task}/children"):
                return None
            continue
        found.extend(int(word) for word in data.split())
    return found


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` was started with (None when absent
    or unreadable: another user's process, or one that has ended)."""
    data = _read(f"{PROC}/{pid}/environ", whole=True)
    if data is None:
        return None
    key = name.encode() + b"="
    if data.startswith(key):
        at = 0
    else:
        at = data.find(b"\0" + key)
        if at < 0:
            return None
        at += 1
    end = data.find(b"\0", at)
    return data[at + len(key):end if end >= 0 else len(data)].decode("utf-8", "replace")


def cmdline(pid: int, limit: int = 200) -> str:
    """The command line of ``pid`` for a log line (its name in brackets when it has none)."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as handle:
            data = handle.read(limit + 1)
        if not data.strip(b"\0"):
            with open(f"{PROC}/{pid}/comm", "rb") as handle:
                data = b"[" + handle.read().strip() + b"]"
    except OSError:
        return "?"
    text = data.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def describe(procs: Iterable[Proc]) -> str:
    return "; ".join(f"pid {proc.pid} ({cmdline(proc.pid)})"
                     for proc in sorted(procs, key=lambda p: p.pid))


def alive(proc: Proc) -> bool:
    """Whether the very process ``proc`` still runs (not ended, pid not reused)."""
    now = stat(proc.pid)
    return now is not None and now.start == proc.start and not now.ended


def dying(proc: Proc) -> bool:
    """Whether SIGKILL is already on its way to ``proc`` (pending: it will be gone at once)."""
    data = _read(f"{PROC}/{proc.pid}/status") or b""
    for line in data.splitlines():
        if line.startswith((b"SigPnd:", b"ShdPnd:")):
            with contextlib.suppress(ValueError):
                if int(line.split()[1], 16) & (1 << (signal.SIGKILL - 1)):
                    return True
    return False


def send(proc: Proc, sig: int) -> bool:
    """Send ``sig`` to the very process ``proc``; False when it has ended (or is not ours)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        return False
    try:
        if not alive(proc):  # checked after the pidfd pinned the process: no pid reuse race
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def terminate(procs: Iterable[Proc]) -> list[Proc]:
    """The polite stop: SIGTERM, then SIGCONT so a stopped process sees it. Returns those
    that were signalled."""
    sent = [proc for proc in procs if send(proc, signal.SIGTERM)]
    for proc in sent:
        send(proc, signal.SIGCONT)
    return sent


def kill(procs: Iterable[Proc]) -> list[Proc]:
    return [proc for proc in procs if send(proc, signal.SIGKILL)]


def boottime_offset() -> float:
    """CLOCK_BOOTTIME minus CLOCK_MONOTONIC: turns process start times into monotonic time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()


def identity_of(pid: int) -> str | None:
    """``<pid>.<start>`` of the live process ``pid`` (None when none, or a zombie)."""
    proc = stat(pid)
    return None if proc is None or proc.ended else proc.identity


def subtree(root: int) -> set[int] | None:
    """``root`` and its descendants from the ``children`` files (a few small reads per
    process of the subtree, no walk of the whole table); None where the kernel has none."""
    found = {root}
    pending = [root]
    while pending:
        children = children_of(pending.pop())
        if children is None:
            return None
        fresh = [pid for pid in children if pid not in found]
        found.update(fresh)
        pending.extend(fresh)
    return found


def is_child_subreaper() -> bool:
    """Whether this process reaps its orphaned descendants (``set_child_subreaper``)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        flag = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0:  # PR_GET_CHILD_SUBREAPER
            return flag.value != 0
    return False


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+): a double fork
    or a dead worker then leaves its processes under us, not under init."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    return False

"""A cgroup v2 per worker, where the master may create one: exact membership for a run's
processes (no double fork, ``setsid`` or cleared environment leaves its cgroup).

The master makes ``<its cgroup>/panda-daemon-<pid>-<start>/`` (its *subtree*), moves itself
into ``master/`` below it, and each worker into ``worker-<index>-<pid>/``. Moving a worker
needs write access to the subtree's ``cgroup.procs`` (the common ancestor), so a master that
switches user prepares the subtree while still root and hands it to the service user, the
way systemd delegates a cgroup. Under systemd the unit must delegate its cgroup
(``Delegate=yes``); elsewhere the master needs write access to its own cgroup, which root
has. ``PANDA_DAEMON_CGROUPS`` = ``auto`` (default), ``on`` (also in a systemd unit that does
not show it delegates: systemd before v250 did not mark delegated cgroups) or ``off``.
When no cgroup can be made, containment falls back on the process tree, the worker's
session and the environment marker (see ``tracker``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pandaserver.daemons.containment import proctable

log = logging.getLogger("panda.master")

SWITCH = "PANDA_DAEMON_CGROUPS"
PREFIX = "panda-daemon-"
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")


class CgroupUnavailable(Exception):
    """No cgroup for the workers; the message says why and what would enable them."""


def _mount_and_path(pid: int | str = "self") -> tuple[Path, str] | None:
    """The cgroup v2 mount point and ``pid``'s cgroup path relative to it."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split()
        root, mount = fields[3], fields[4]
        if own == root or own.startswith(root.rstrip("/") + "/"):
            return Path(mount), own[len(root.rstrip("/")):].lstrip("/")
    return None


def cgroup_of(pid: int | str = "self") -> Path | None:
    """The directory of ``pid``'s cgroup v2, or None without one."""
    found = _mount_and_path(pid)
    return None if found is None else found[0] / found[1]


def master_subtree(pid: int) -> Path | None:
    """The subtree of the master ``pid`` (None when it runs without cgroups)."""
    path = cgroup_of(pid)
    if path is not None and path.name == "master" and path.parent.name.startswith(PREFIX):
        return path.parent
    return None


def members(path: Path) -> list[int]:
    try:
        return [int(word) for word in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def populated(path: Path) -> bool:
    """Whether a task is still in the cgroup or below it (``cgroup.events``; a process that
    looks a zombie while its other threads exit still counts). False if it cannot be read."""
    try:
        return "populated 1" in (path / "cgroup.events").read_text().splitlines()
    except OSError:
        return False


def move(path: Path, pid: int) -> None:
    (path / "cgroup.procs").write_text(f"{pid}\n")


def kill_all(path: Path) -> bool:
    """SIGKILL every process in the cgroup at once (``cgroup.kill``, Linux 5.14+)."""
    try:
        (path / "cgroup.kill").write_text("1\n")
    except OSError:
        return False
    return True


def remove(path: Path) -> bool:
    """Remove an empty cgroup (and empty cgroups below it); False while one is in use."""
    with contextlib.suppress(OSError):
        for child in path.iterdir():
            if child.is_dir():
                remove(child)
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _master_alive(name: str) -> bool:
    """Whether the master a subtree ``panda-daemon-<pid>-<start>`` was made for still runs."""
    pid, _, start = name.removeprefix(PREFIX).partition("-")
    return pid.isdigit() and proctable.identity_of(int(pid)) == f"{pid}.{start}"


def subtree_processes(subtree: Path) -> list[int]:
    """Every process in ``subtree`` and below (a dead master's leftovers)."""
    found: list[int] = []
    for path in [subtree, *(p for p in subtree.rglob("*") if p.is_dir())]:
        found.extend(members(path))
    return found


def remove_stale(parent: Path) -> None:
    """Subtrees of masters that are gone: SIGKILL what is left in them, and remove them."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if entry.name.startswith(PREFIX) and entry.is_dir() and not _master_alive(entry.name):
                left = subtree_processes(entry)
                if left:
                    log.warning("killing %d processes left in the cgroup %s of a master that is"
                                " gone: %s", len(left), entry,
                                ", ".join(f"pid {pid} ({proctable.cmdline(pid)})" for pid in left))
                    for path in [entry, *(p for p in entry.rglob("*") if p.is_dir())]:
                        kill_all(path)
                remove(entry)


@dataclass
class Subtree:
    """The master's cgroup subtree: ``master/`` holds the master, one cgroup per worker."""

    path: Path
    pid: int
    workers: dict[int, Path] = field(default_factory=dict)

    def add_worker(self, index: int, pid: int) -> Path:
        """Make the worker's cgroup and move it in (before it is sent anything to run)."""
        path = self.path / f"worker-{index}-{pid}"
        path.mkdir(exist_ok=True)
        try:
            move(path, pid)
        except OSError:
            remove(path)
            raise
        self.workers[pid] = path
        return path

    def drop_worker(self, pid: int) -> bool:
        """Remove a gone worker's cgroup once it is empty; False while processes remain."""
        path = self.workers.get(pid)
        if path is None or remove(path):
            self.workers.pop(pid, None)
            return True
        return False

    def close(self) -> None:
        """Leave the subtree (back to the cgroup we came from) and remove it. Without the
        right to move back (a master that switched user) it stays, empty, until the next
        master or ``stop`` removes it."""
        for pid in list(self.workers):
            self.drop_worker(pid)
        with contextlib.suppress(OSError):
            move(self.path.parent, os.getpid())
        remove(self.path)


_prepared: Subtree | None = None
_reason = ""


def prepare(owner: tuple[int, int] | None = None) -> Subtree | None:
    """The master's subtree, made once per process (before a user switch, with ``owner``
    the service user's uid and gid); None, with ``reason()`` saying why, where it cannot be.
    """
    global _prepared, _reason
    if _prepared is not None and _prepared.pid == os.getpid():
        return _prepared
    try:
        _prepared = _make(owner)
        _reason = ""
    except CgroupUnavailable as exc:
        _prepared, _reason = None, str(exc)
    return _prepared


def reason() -> str:
    return _reason


def _make(owner: tuple[int, int] | None) -> Subtree:
    mode = os.environ.get(SWITCH, "auto").strip().lower()
    if mode == "off":
        raise CgroupUnavailable(f"{SWITCH}=off")
    found = _mount_and_path()
    if found is None:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    parent = found[0] / found[1]
    if mode != "on" and parent.name.endswith((".service", ".scope")) and not _delegated(parent):
        raise CgroupUnavailable(
            f"the systemd unit's cgroup {parent} is not delegated: set Delegate=yes in the unit"
            f" (or {SWITCH}=on with a systemd older than v250, which does not mark delegation)")
    remove_stale(parent)
    me = proctable.stat(os.getpid())
    assert me is not None
    path = parent / f"{PREFIX}{me.pid}-{me.start}"
    try:
        path.mkdir(exist_ok=True)
        (path / "master").mkdir(exist_ok=True)
        move(path / "master", me.pid)
        if owner is not None:
            for item in (path, path / "cgroup.procs", path / "cgroup.threads",
                         path / "cgroup.subtree_control", path / "master",
                         path / "master" / "cgroup.procs"):
                os.chown(item, *owner)
            with contextlib.suppress(FileNotFoundError):  # Linux 5.14+: for a worker whose
                os.chown(path / "cgroup.kill", *owner)  # master died (watchdog.py)
    except OSError as exc:
        with contextlib.suppress(OSError):
            move(parent, me.pid)
        remove(path)
        what = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else str(exc)
        raise CgroupUnavailable(f"cannot create a cgroup under {parent}: {what}") from None
    return Subtree(path=path, pid=me.pid)


def _delegated(path: Path) -> bool:
    for name in DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(path, name).strip() in (b"1", b"true"):
                return True
    return False

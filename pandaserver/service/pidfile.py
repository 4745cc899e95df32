"""The master's pid file, locked for the master's whole life.

The master takes a POSIX record lock (``fcntl``) on the whole file and keeps the descriptor
open until it exits, so the kernel releases the lock when the master dies, even by SIGKILL.
A lock, not the file's existence, says that a master runs:

- a second master on the same file cannot take the lock and refuses to start;
- a file nobody holds a lock on is stale (left by a dead master, or naming a pid the system
  has since reused) and is replaced;
- ``lock_holder`` asks the kernel which process holds the lock (``F_GETLK``) without taking
  it, so ``status`` and ``stop`` act on the real master, never on a pid merely written in a
  file.

POSIX locks belong to a process and are dropped when that process closes *any* descriptor
of the file, so the master must not open the pid file anywhere else.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

PID_FILE_NAME = "panda_daemon.pid"
WEB_PID_FILE_NAME = "panda-daemon-web.pid"  # panda-daemon web --detach (pandaserver.web.server)
LOCK_DIR_VARIABLE = "PANDA_LOCK_DIR"
DEFAULT_PID_DIR = Path("/var/run/panda")


def lock_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the pid files are (the master's, the web server's): ``$PANDA_LOCK_DIR``, else
    ``/var/run/panda``."""
    env = os.environ if environ is None else environ
    named = env.get(LOCK_DIR_VARIABLE)
    return Path(named) if named else DEFAULT_PID_DIR


def default_pidfile(environ: Mapping[str, str] | None = None) -> Path:
    """``$PANDA_LOCK_DIR/panda_daemon.pid``, else ``/var/run/panda/panda_daemon.pid``."""
    return lock_dir(environ) / PID_FILE_NAME


class PidFileBusy(Exception):
    """Another live process holds the lock on the pid file."""

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"panda-daemon is already running ({who} holds the pid file {path})")


class _Flock(ctypes.Structure):
    """``struct flock`` of Linux (Python is built with 64-bit ``off_t``)."""

    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


def _holder_of(fd: int) -> int | None:
    """The pid holding a lock that conflicts with a write lock on the whole file, or None."""
    query = _Flock(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    answer = _Flock.from_buffer_copy(fcntl.fcntl(fd, fcntl.F_GETLK, bytes(query)))
    if answer.l_type == fcntl.F_UNLCK:
        return None
    return int(answer.l_pid) or -1  # 0: the holder is in another pid namespace


def lock_holder(path: Path) -> int | None:
    """The pid of the master holding ``path`` locked; None when no process holds it.

    -1 means a process holds it whose pid this namespace cannot see.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _holder_of(fd)
    finally:
        os.close(fd)


def read_pid(path: Path) -> int | None:
    """The pid written in the file (its first line), or None when there is no file or no
    number in it."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, IsADirectoryError):
        return None
    first = text.splitlines()[0].strip() if text else ""
    return int(first) if first.isdigit() else None


def exit_note(path: Path) -> tuple[int, str] | None:
    """(status, reason) a master that ended with a failure status left in its pid file
    (``PidFile.release``), or None."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    if len(lines) < 2 or not lines[1].startswith("exit "):
        return None
    code, _, reason = lines[1][len("exit "):].partition(":")
    return (int(code), reason.strip()) if code.isdigit() else None


class PidFile:
    """The master's side: take the lock, write our pid, and remove the file at exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Lock the file and write this process's pid into it.

        Returns the pid a stale file named (None if the file was new or empty); raises
        ``PidFileBusy`` when a live process holds the lock, ``OSError`` when the file
        cannot be created or written.
        """
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = _holder_of(fd)
                os.close(fd)
                raise PidFileBusy(self.path, holder) from None
            if not self._still_at_path(fd):  # a stopping master removed it meanwhile
                os.close(fd)
                continue
            stale = _parse_pid(os.pread(fd, 64, 0))
            os.fchmod(fd, 0o644)  # readable by status and stop whatever the umask
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            os.fsync(fd)
            self.fd = fd
            return stale if stale != os.getpid() else None
        raise OSError(errno.EAGAIN, f"the pid file {self.path} keeps being replaced")

    def _still_at_path(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def release(self, code: int = 0, reason: str = "") -> None:
        """Remove the file while still holding the lock, then let the lock go.

        A master that ends with a failure status (``code``) leaves the file with that status
        and ``reason`` on its second line (``exit_note``): ``stop`` reports them, since a
        detached master's status reaches no one else; the file is then stale, and ``start``
        replaces it. Removal may be refused (a directory the master, after dropping
        privileges, cannot write); the file is then stale, which the next start and ``stop``
        handle.
        """
        if self.fd is None:
            return
        if code and self._still_at_path(self.fd):
            line = " ".join(f"exit {code}: {reason}".split())
            with contextlib.suppress(OSError):
                os.pwrite(self.fd, f"{os.getpid()}\n{line}\n".encode("utf-8", "replace"), 0)
                os.fsync(self.fd)
        elif self._still_at_path(self.fd):
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _parse_pid(data: bytes) -> int | None:
    text = data.decode("ascii", errors="replace").strip()
    first = text.splitlines()[0].strip() if text else ""
    return int(first) if first.isdigit() else None


def remove_stale(path: Path, expected: int | None) -> bool:
    """Remove ``path`` if no process holds it and it still names ``expected``."""
    if lock_holder(path) is not None or read_pid(path) != expected:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True

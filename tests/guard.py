"""The test session's guard: whatever becomes of pytest, nothing it started survives it.

``start(scratch)`` (called by conftest when pytest starts) puts a token in pytest's
environment, which every process the tests start inherits (database servers, web servers,
masters, workers, scripts and their children, detached or not), and starts this module as
a process of its own session holding the read end of a pipe only pytest writes to. When
pytest ends, however it ends (normally, SIGTERM, SIGKILL by a CI timeout), the pipe reports
end-of-file: the watchdog SIGTERMs every process carrying the token, SIGKILLs what is left
after a grace, removes the session's scratch directory (the database servers' data) and
exits. After a normal end there should be nothing to kill: it says so on stderr if there is.

Given the session's cgroup (``session_cgroup``: pytest moves itself into one of its own
where it may), the watchdog stays outside it and, at the end, clears and removes only that
cgroup: the subtrees that the session's masters made there. Without one it clears the
subtrees of gone masters in its own cgroup, as masters do when they start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

TOKEN_VAR = "PYTEST_PANDA_SESSION"  # not PANDA_*: some tests pass on only non-PANDA_ variables
GRACE = 5.0


def marked(var: str, value: str) -> list[psutil.Process]:
    """Every live process (zombies aside) started with ``var=value`` in its environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(var) == value:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    parts = []
    for proc in procs:
        try:
            parts.append(f"pid {proc.pid} ({' '.join(proc.cmdline())[:150]})")
        except psutil.Error:
            parts.append(f"pid {proc.pid}")
    return "; ".join(parts)


def end_all(var: str, value: str, grace: float = GRACE) -> str:
    """SIGTERM every process marked ``var=value``, SIGKILL those left after ``grace``;
    return what was found ("" for nothing)."""
    found = marked(var, value)
    named = describe(found)
    for proc in found:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and marked(var, value):
        time.sleep(0.1)
    for _ in range(50):  # new ones may appear while their parents die: until none is left
        left = marked(var, value)
        if not left:
            break
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(0.1)
    return named


CGROUP_PREFIX = "panda-tests-"  # a session's own cgroup: panda-tests-<token>


def session_cgroup(token: str) -> Path | None:
    """A new cgroup for this session, beside (not inside) any other session's, or None
    where none can be made (no cgroup v2, no write access). Masters make their subtrees in
    their own cgroup and, when they start, clear the subtrees of gone masters there: in a
    cgroup of its own, a session's masters never touch those of a session running beside
    it (another pytest-xdist worker, another checkout's suite)."""
    try:
        from pandaserver.daemons.containment.cgroups import cgroup_of
    except ImportError:
        return None
    own = cgroup_of()
    if own is None:
        return None
    base = own.parent if own.name.startswith(CGROUP_PREFIX) else own
    path = base / f"{CGROUP_PREFIX}{token}"
    try:
        path.mkdir()
    except OSError:
        return None
    return path


def enter(path: Path) -> bool:
    """Move this process into ``path`` (children started from now on are born there)."""
    from pandaserver.daemons.containment.cgroups import move, remove

    try:
        move(path, os.getpid())
    except OSError:
        remove(path)
        return False
    return True


def start(scratch: Path) -> str:
    """Mark this process's future children, start the watchdog and, where it can, move this
    process into a cgroup of the session's own; returns the token."""
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token
    # a process title (setproctitle: masters, workers, gunicorn) must not overwrite the
    # environment as /proc shows it, or the token could not be read there
    os.environ["SPT_NOENV"] = "1"
    cgroup = session_cgroup(token)
    read_end, write_end = os.pipe()  # the write end is not inherited by anything (PEP 446)
    subprocess.Popen([sys.executable, __file__, token, str(scratch), str(cgroup or "")],
                     stdin=read_end, start_new_session=True, close_fds=True)
    os.close(read_end)
    _keep.append(write_end)  # held open, unread, until this process ends
    if cgroup is not None:
        enter(cgroup)  # the watchdog, started before, stays outside
    return token


_keep: list[int] = []


def main() -> None:
    token, scratch = sys.argv[1], Path(sys.argv[2])
    cgroup = Path(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest, not for us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cgroup is not None:  # out of the session's cgroup (a worker of pytest-xdist starts
        with contextlib.suppress(OSError):  # its watchdog in its controller's): removable
            (cgroup.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
    while True:
        try:
            if not os.read(0, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    found = end_all(TOKEN_VAR, token)
    if found:
        print(f"panda test guard: pytest ended leaving processes; ended them: {found}",
              file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    try:  # the cgroups of masters the tests killed (pandaserver/daemons/containment/cgroups.py)
        from pandaserver.daemons.containment.cgroups import cgroup_of, remove, remove_stale
    except ImportError:
        return
    parent = cgroup if cgroup is not None else cgroup_of()
    if parent is not None:
        remove_stale(parent)
    if cgroup is not None and not remove(cgroup):
        print(f"panda test guard: the session's cgroup {cgroup} is still in use; kept",
              file=sys.stderr)


if __name__ == "__main__":
    main()

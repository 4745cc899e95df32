"""The test session's guard: whatever becomes of pytest, nothing it started survives it.

``start(scratch)`` (called by conftest when pytest starts) puts a token in pytest's
environment, which every process the tests start inherits (database servers, web servers,
masters, workers, scripts and their children, detached or not), and starts this module as
a process of its own session holding the read end of a pipe only pytest writes to. When
pytest ends, however it ends (normally, SIGTERM, SIGKILL by a CI timeout), the pipe reports
end-of-file: the watchdog SIGTERMs every process carrying the token, SIGKILLs what is left
after a grace, removes the session's scratch directory (the database servers' data) and
exits. After a normal end there should be nothing to kill: it says so on stderr if there is.
"""

from __future__ import annotations

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


def start(scratch: Path) -> str:
    """Mark this process's future children and start the watchdog; returns the token."""
    token = uuid.uuid4().hex
    os.environ[TOKEN_VAR] = token
    # a process title (setproctitle: masters, workers, gunicorn) must not overwrite the
    # environment as /proc shows it, or the token could not be read there
    os.environ["SPT_NOENV"] = "1"
    read_end, write_end = os.pipe()  # the write end is not inherited by anything (PEP 446)
    subprocess.Popen([sys.executable, __file__, token, str(scratch)], stdin=read_end,
                     start_new_session=True, close_fds=True)
    os.close(read_end)
    _keep.append(write_end)  # held open, unread, until this process ends
    return token


_keep: list[int] = []


def main() -> None:
    token, scratch = sys.argv[1], Path(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest, not for us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
        from pandaserver.daemons.containment.cgroups import cgroup_of, remove_stale
    except ImportError:
        return
    parent = cgroup_of()
    if parent is not None:
        remove_stale(parent)


if __name__ == "__main__":
    main()

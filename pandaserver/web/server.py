"""``panda-daemon web``: the WSGI application served by gunicorn, in the foreground or
detached (for rc.d scripts: returns once it answers), and ``--stop``.

gunicorn runs one worker process with threads by default: the pages are light, and the
counters of ``/metrics`` stay consistent when one process serves them (see metrics.py).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from pandaserver.service.pidfile import WEB_PID_FILE_NAME, lock_dir
from pandaserver.web.settings import parse_bind

PROC_NAME = "panda-daemon-web"
LOG_NAME = "panda-daemon-web.log"
START_WAIT = 30.0
STOP_WAIT = 20.0


class WebServer(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, load: Callable[[], Any], options: dict[str, Any]) -> None:
        self._load = load
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load()


def gunicorn_options(bind: str, workers: int, threads: int, access_log: str | None,
                     pidfile: Path | None) -> dict[str, Any]:
    return {
        "bind": [bind], "workers": workers, "worker_class": "gthread", "threads": threads,
        "timeout": 60, "graceful_timeout": 10, "accesslog": access_log, "errorlog": "-",
        "proc_name": PROC_NAME, "pidfile": str(pidfile) if pidfile else None,
        "control_socket_disable": True,  # no socket under ~/.gunicorn, which servers share
    }


def serve(load: Callable[[], Any], options: dict[str, Any]) -> int:
    """Run gunicorn in the foreground until SIGTERM/SIGINT (graceful) and return its status."""
    try:
        WebServer(load, options).run()
    except SystemExit as exc:  # gunicorn's arbiter ends with sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def default_pidfile() -> Path:
    return lock_dir() / WEB_PID_FILE_NAME


def _answers(bind: str) -> bool:
    """True once the server answers a request (a worker loaded the application), not
    merely accepts connections (gunicorn's arbiter binds before its workers boot)."""
    if bind.startswith("unix:"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            sock.connect(bind[5:])
            sock.sendall(b"GET /api HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
        return False
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    connection = http.client.HTTPConnection(host, int(port), timeout=2.0)
    try:
        connection.request("GET", "/api")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def start_detached(argv: list[str], bind: str, log_file: Path, wait: float = START_WAIT) -> int:
    """Start ``panda-daemon ... web`` (``argv``, without ``--detach``) in a new session,
    output to ``log_file``; return 0 once it answers on ``bind``, 1 if it ended first or
    did not answer within ``wait`` seconds (then it is stopped)."""
    parse_bind(bind)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log, open(os.devnull, "rb") as devnull:
        child = subprocess.Popen([sys.executable, "-m", "pandaserver.commands.main", *argv],
                                 stdin=devnull, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if child.poll() is not None:
            sys.stderr.write(f"panda-daemon web: the server ended at start (status"
                             f" {child.returncode}); see {log_file}\n")
            return 1
        if _answers(bind):
            sys.stdout.write(f"panda-daemon web: serving on {bind} (pid {child.pid},"
                             f" log {log_file})\n")
            return 0
        time.sleep(0.1)
    child.terminate()
    child.wait(STOP_WAIT)
    sys.stderr.write(f"panda-daemon web: no answer on {bind} within {wait:g} s; stopped it;"
                     f" see {log_file}\n")
    return 1


def stop(pidfile: Path, wait: float = STOP_WAIT) -> int:
    """SIGTERM the server of ``pidfile`` (graceful), SIGKILL after ``wait`` seconds.
    0 when it is gone (or was not running), 1 when it could not be stopped."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        sys.stdout.write(f"panda-daemon web: not running (no pid in {pidfile})\n")
        return 0
    if not _is_web_server(pid, pidfile):
        sys.stdout.write(f"panda-daemon web: not running (pid {pid} of {pidfile} is gone or"
                         " is another program: left alone)\n")
        with contextlib.suppress(OSError):
            pidfile.unlink()
        return 0
    for sig, patience in ((signal.SIGTERM, wait), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and _exists(pid):
            time.sleep(0.05)
        if not _exists(pid):
            break
    if _exists(pid):
        sys.stderr.write(f"panda-daemon web: pid {pid} did not stop\n")
        return 1
    with contextlib.suppress(OSError):
        pidfile.unlink()
    sys.stdout.write(f"panda-daemon web: stopped (pid {pid})\n")
    return 0


def _is_web_server(pid: int, pidfile: Path) -> bool:
    """Whether ``pid`` is the gunicorn master the pid file was written for (not a process
    that reused the number after a crash)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        words = " ".join(proc.cmdline())
        started = proc.create_time()
    except psutil.Error:
        return False
    try:
        written = pidfile.stat().st_mtime
    except OSError:
        return False
    return ("gunicorn" in words or "panda-daemon" in words) and started <= written + 1.0


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True

"""A real ``panda-daemon`` service under a temporary directory, for the service tests:
its commands run in subprocesses, every process it starts is found by a marker in its
environment, and ``checked`` fails a test that leaves any behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from harness import FIXTURES, REPO, SPUN, recorded, wait_for, write_config

from pandaserver.service.pidfile import lock_holder

MARKER = "PANDA_SERVICE_TEST"
POLL = 0.05
RET_STALE, RET_NOT_RUNNING, RET_PIDFILE, RET_USER = 1, 3, 5, 6


class Service:
    """A service installation in a temporary directory, and every process it started."""

    def __init__(self, root: Path, *, python: str = sys.executable, no_root: bool = True,
                 pythonpath: list[str] | None = None) -> None:
        self.root = root
        self.logdir = root / "logs"
        self.pidfile = root / "run" / "panda_daemon.pid"
        self.record = root / "record.jsonl"
        self.python = python
        self.marker = uuid.uuid4().hex
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("PANDA_") and k != "NOTIFY_SOCKET"}
        self.env.update({
            "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO), *(pythonpath or [])]),
            "PANDA_LOCK_DIR": str(self.pidfile.parent), "PANDA_TEST_RECORD": str(self.record),
            "PANDA_DAEMON_STATE_DIR": str(root / "state"),  # the fleet's SQLite file
            "PYTHONUNBUFFERED": "1", MARKER: self.marker})
        if no_root:
            self.env["PANDA_NO_ROOT"] = "1"
        self.config = self.write({"quick": {"module": "record", "period": 2}})

    extra_sections = ""

    def write(self, scripts: dict[str, dict[str, Any]], **daemon: Any) -> Path:
        daemon.setdefault("stop_grace", 2)
        path: Path = write_config(self.root, scripts, **daemon,
                                  extra=f"[server]\nlogdir = {self.logdir}\n"
                                        + self.extra_sections)
        return path

    def command(self) -> list[str]:
        return [self.python, "-m", "pandaserver.commands.main", "-c", str(self.config)]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.command(), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL, cwd="/")

    def start(self) -> int:
        result = self.cli("start")
        assert result.returncode == 0, result.stdout + result.stderr
        pid = int(result.stdout.split("master pid ")[1].split()[0])
        assert lock_holder(self.pidfile) == pid, "start returned before the master was up"
        return pid

    def stop(self) -> None:
        result = self.cli("stop")
        assert result.returncode == 0, result.stdout + result.stderr
        assert not self.pidfile.exists()
        assert self.processes() == [], "stop returned 0 with processes left"

    def log(self, name: str = "panda_daemon_stdout.log") -> str:
        path = self.logdir / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_log(self, text: str, name: str = "panda_daemon_stdout.log", count: int = 1,
                 timeout: float = 15) -> None:
        wait_for(lambda: self.log(name).count(text) >= count, timeout,
                 lambda: f"{text!r} x{count} in {name}:\n{self.log(name)[-2000:]}",
                 interval=POLL)

    def workers(self, master: int, count: int) -> list[psutil.Process]:
        def found() -> list[psutil.Process] | None:
            children = [p for p in psutil.Process(master).children()
                        if title(p).startswith("panda_daemon: worker")]
            return children if len(children) == count else None
        workers: list[psutil.Process] = wait_for(found, 15, f"{count} workers of {master}",
                                                 interval=POLL)
        return workers

    def processes(self) -> list[psutil.Process]:
        """Every live process of this service: started with its environment marker, or with
        a file of its directory open (a process title overwrites the environment as
        /proc shows it, so masters and workers are found by their log and pid files)."""
        inside = str(self.root.resolve()) + os.sep
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(MARKER) == self.marker or \
                        any(f.path.startswith(inside) for f in proc.open_files()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def cleanup(self) -> list[int]:
        left = self.processes()
        for proc in left:
            try:
                group = os.getpgid(proc.pid)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
                proc.kill()
            except (OSError, psutil.Error):
                pass
        wait_for(lambda: not self.processes(), 10, "leftover processes to die", interval=POLL)
        return [proc.pid for proc in left]


def title(proc: psutil.Process) -> str:
    try:
        return " ".join(part for part in proc.cmdline() if part).strip()
    except psutil.Error:
        return ""


def events(svc: Service, event: str, name: str) -> list[dict[str, Any]]:
    return [row for row in recorded(svc.record) if row["event"] == event and row["name"] == name]


ServiceT = TypeVar("ServiceT", bound=Service)


def checked(service: ServiceT) -> Iterator[ServiceT]:
    """Yield the service; then kill whatever it left running, and fail if anything was."""
    yield service
    left = service.cleanup()
    assert not left, f"processes left behind: {left}\n{service.log()[-2000:]}"
    spun = [line for name in ("panda-daemons.log", "panda_daemon_stdout.log")
            for line in service.log(name).splitlines() if SPUN in line]
    assert not spun, f"the master's loop spun: {spun[:3]}"


def python_for(uid: int, gid: int, path: list[str]) -> str:
    """An interpreter the user can run with our packages (the venv's Python may live under
    /root, which the user cannot read; Debian's of the same version shares the ABI)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import psutil, setproctitle, daemon, pandaserver.commands.main"],
                env={"PYTHONPATH": os.pathsep.join(path), "PATH": os.environ["PATH"]},
                user=uid, group=gid, extra_groups=[], capture_output=True, cwd="/", check=False)
        except OSError:  # not there, or not executable by the user
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python interpreter that uid {uid} can run with this project: make the"
                " virtualenv's interpreter readable by it", pytrace=False)

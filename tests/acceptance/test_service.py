"""``panda-daemon start | stop | status | restart | reload | reopen-logs`` for real.

Every test runs the real command in subprocesses against a pid file, log directory and
config under a temporary directory, waits on conditions with deadlines, and at teardown
finds every process it started (by a marker in their environment), kills what is left and
fails if anything was.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from harness import FIXTURES, REPO, pid_alive, wait_for, write_config
from sqlalchemy import text

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade
from pandaserver.service.pidfile import lock_holder, read_pid

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
                        if _title(p).startswith("panda_daemon: worker")]
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


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(part for part in proc.cmdline() if part).strip()
    except psutil.Error:
        return ""


def events(svc: Service, event: str, name: str) -> list[dict[str, Any]]:
    import json

    if not svc.record.exists():
        return []
    rows = [json.loads(line) for line in svc.record.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["event"] == event and row["name"] == name]


ServiceT = TypeVar("ServiceT", bound=Service)


def checked(service: ServiceT) -> Iterator[ServiceT]:
    """Yield the service; then kill whatever it left running, and fail if anything was."""
    yield service
    left = service.cleanup()
    assert not left, f"processes left behind: {left}\n{service.log()[-2000:]}"


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    yield from checked(Service(tmp_path))


def test_start_status_second_start_and_stop(svc: Service) -> None:
    svc.config = svc.write({"quick": {"module": "record", "period": 2},
                            "slow": {"module": "record", "period": 60, "arguments": [30]}})
    pid = svc.start()
    assert read_pid(svc.pidfile) == pid
    master = psutil.Process(pid)
    assert master.ppid() != os.getpid() and os.getsid(pid) != os.getsid(0)  # detached
    assert master.terminal() is None
    wait_for(lambda: _title(master) == "panda_daemon: master", 10, "the master's title")
    svc.workers(pid, 2)
    wait_for(lambda: events(svc, "start", "slow"), 15, "slow to start", interval=POLL)

    status = wait_for(lambda: "slow run " in (r := svc.cli("status")).stdout and r, 15,
                      "status naming what a worker runs")
    assert status.returncode == 0
    assert f"is running: master pid {pid} as " in status.stdout
    assert " up 0h 00m " in status.stdout
    assert "workers (2 of n_proc 2)" in status.stdout, status.stdout
    quick = next(line for line in status.stdout.splitlines() if line.split()[:1] == ["quick"])
    # NEXT DUE of a script of period 2 s that is scheduled: running, due now, or due within
    # its period (never "-", never "not scheduled", never later than a period away)
    due = re.split(r"\s{2,}", quick.strip())[3]
    assert re.fullmatch(r"running now|now|in (\d+ms|[0-9.]+s)", due), status.stdout
    if due.startswith("in ") and due.endswith("s") and not due.endswith("ms"):
        assert float(due[3:-1]) <= 2.0, status.stdout

    again = svc.cli("start")
    assert again.returncode == RET_PIDFILE
    assert f"already running (pid {pid} holds the pid file {svc.pidfile})" in again.stderr
    assert lock_holder(svc.pidfile) == pid and read_pid(svc.pidfile) == pid

    svc.wait_log("master started on")
    svc.wait_log("[quick run ", name="panda-daemons.log")
    assert "hello from quick" in svc.log("panda-daemons.log")
    svc.stop()
    status = svc.cli("status")
    assert status.returncode == RET_NOT_RUNNING
    assert "not running (no pid file" in status.stdout


def test_reload_applies_changes_without_killing_runs_and_refuses_broken_config(
        svc: Service) -> None:
    svc.config = svc.write({"quick": {"module": "record", "period": 2},
                            "gone": {"module": "record", "period": 2},
                            "slow": {"module": "record", "period": 60, "arguments": [2]}})
    pid = svc.start()
    workers = {p.pid for p in svc.workers(pid, 2)}
    running = wait_for(lambda: events(svc, "start", "slow"), 15, "slow to start")[0]
    svc.write({"quick": {"module": "record", "period": 3},
               "added": {"module": "record", "period": 2},
               "slow": {"module": "record", "period": 60, "arguments": [2]}})
    result = svc.cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"sent SIGHUP to the master (pid {pid})" in result.stdout
    for line in ("reload: script gone removed", "reload: script added added",
                 "reload: script quick changed", "reload: configuration applied"):
        svc.wait_log(line)
    svc.wait_log("[added run ", name="panda-daemons.log")
    ended = wait_for(lambda: events(svc, "end", "slow"), 15, "slow to finish its run")[0]
    assert ended["pid"] == running["pid"], "the running script was not left to finish"
    assert {p.pid for p in svc.workers(pid, 2)} == workers

    good = svc.config.read_text()
    svc.write({"quick": {"module": "record", "period": 2}}, n_proc=0)  # invalid
    result = svc.cli("reload")
    assert result.returncode == 2
    assert "n_proc" in result.stderr and "not reloading" in result.stderr
    svc.config.write_text(good.replace('"added": {', '"added": {{'))  # would drop every script
    result = svc.cli("reload")
    assert result.returncode == 2 and "invalid JSON" in result.stderr
    os.kill(pid, signal.SIGHUP)  # as systemd's ExecReload does, without the check
    svc.wait_log("reload refused, keeping the running configuration")
    assert "invalid JSON at line" in svc.log() and "reload: script added removed" not in svc.log()

    svc.config.write_text("[daemon\nnot a config\n")
    assert svc.cli("reload").returncode == 2
    os.kill(pid, signal.SIGHUP)
    svc.wait_log("reload refused, keeping the running configuration", count=2)
    assert "cannot parse" in svc.log()
    runs = svc.log("panda-daemons.log").count("[added run ")
    svc.wait_log("[added run ", name="panda-daemons.log", count=runs + 1)  # still scheduled
    assert lock_holder(svc.pidfile) == pid
    svc.stop()


def test_stale_pid_file_is_detected_never_signalled_and_replaced(svc: Service) -> None:
    svc.pidfile.parent.mkdir()
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        svc.pidfile.write_text(f"{bystander.pid}\n")  # a live process that is no master
        status = svc.cli("status")
        assert status.returncode == RET_STALE
        assert f"stale (it names pid {bystander.pid}" in status.stdout
        stop = svc.cli("stop")
        assert stop.returncode == 0 and "removed the stale pid file" in stop.stdout
        assert bystander.poll() is None and not svc.pidfile.exists()
    finally:
        bystander.kill()
        bystander.wait()

    svc.pidfile.write_text(f"{bystander.pid}\n")  # now a dead master's
    pid = svc.start()
    assert read_pid(svc.pidfile) == pid
    svc.wait_log(f"replaced the stale pid file {svc.pidfile}: pid {bystander.pid} held no lock")
    svc.stop()


def test_stop_kills_the_whole_family_after_its_timeout(svc: Service) -> None:
    svc.config = svc.write({"stubborn": {"module": "hang", "arguments": ["stubborn"],
                                         "period": 60, "timeout": 300}}, stop_grace=60)
    pid = svc.start()
    child = wait_for(lambda: events(svc, "start", "stubborn"), 15, "the stubborn script")[0]
    began = time.monotonic()
    result = svc.cli("stop", "--timeout", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - began < 15
    assert "did not stop within 1 s: killing its process group and its workers" in result.stdout
    assert not pid_alive(pid) and not pid_alive(child["child"]) and not pid_alive(child["pid"])
    assert svc.processes() == [] and not svc.pidfile.exists()


def test_stop_never_kills_the_group_of_whoever_ran_no_detach(svc: Service) -> None:
    svc.config = svc.write({"stubborn": {"module": "hang", "arguments": ["stubborn"],
                                         "period": 60, "timeout": 300}}, stop_grace=60)
    mark = svc.root / "shell-survived"
    command = " ".join([*svc.command(), "start", "--no-detach"])
    shell = subprocess.Popen(["sh", "-c", f"{command} & wait; touch {mark}"], env=svc.env,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: events(svc, "start", "stubborn"), 20, "the stubborn script")
        pid = lock_holder(svc.pidfile)
        assert pid is not None and os.getpgid(pid) == shell.pid  # the shell's group
        result = svc.cli("stop", "--timeout", "0.5")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "killing its process group" in result.stdout
        assert shell.wait(10) == 0 and mark.exists()
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="starting as root needs root")
def test_start_as_root_refuses_a_missing_user_or_group(svc: Service) -> None:
    del svc.env["PANDA_NO_ROOT"]
    cases = [({"uname": "no_such_user_panda"}, "user 'no_such_user_panda' (uname in [daemon]"),
             ({"uname": "nobody", "gname": "no_such_group_panda"},
              "group 'no_such_group_panda' (gname in [daemon]"),
             ({}, "started as root, but uname is not set"),
             ({"uname": "root"}, "is root: scripts never run as root unless PANDA_NO_ROOT")]
    for keys, message in cases:
        svc.write({"quick": {"module": "record", "period": 2}}, **keys)
        result = svc.cli("start")
        assert result.returncode == RET_USER, result.stderr
        assert message in result.stderr
        assert not svc.pidfile.exists() and svc.processes() == []


def test_log_files_are_reopened_on_sigusr1(svc: Service) -> None:
    pid = svc.start()
    svc.wait_log("[quick run ", name="panda-daemons.log")
    names = ("panda_daemon_stdout.log", "panda_daemon_stderr.log", "panda-daemons.log")
    for name in names:
        (svc.logdir / name).rename(svc.logdir / f"{name}.1")
    os.kill(pid, signal.SIGUSR1)
    svc.wait_log("log files reopened")
    assert (svc.logdir / "panda_daemon_stderr.log").exists()
    svc.wait_log("[quick run ", name="panda-daemons.log")  # workers follow by themselves
    before = (svc.logdir / "panda_daemon_stdout.log.1").read_text()
    svc.wait_log("quick run ", count=1)
    assert (svc.logdir / "panda_daemon_stdout.log.1").read_text() == before
    result = svc.cli("reopen-logs")
    assert result.returncode == 0 and "reopens its log files" in result.stdout
    svc.wait_log("log files reopened", count=2)
    svc.stop()
    assert svc.cli("reopen-logs").returncode == RET_NOT_RUNNING


def test_shipped_logrotate_config_rotates_and_the_master_reopens(svc: Service) -> None:
    pid = svc.start()
    svc.wait_log("[quick run ", name="panda-daemons.log")
    sysconf = svc.root / "sysconfig"
    sysconf.write_text(f"PANDA_DAEMON='{' '.join(svc.command())}'\n")
    text = (REPO / "etc" / "logrotate.d" / "panda_daemon").read_text()
    conf = svc.root / "logrotate.conf"
    conf.write_text(text.replace("/var/log/panda/", f"{svc.logdir}/")
                    .replace("/etc/sysconfig/panda_server", str(sysconf)))
    result = subprocess.run(["logrotate", "-f", "-s", str(svc.root / "logrotate.state"), str(conf)],
                            capture_output=True, text=True, timeout=60, env=svc.env)
    assert result.returncode == 0, result.stderr
    assert list(svc.logdir.glob("panda_daemon_stdout.log-*"))
    svc.wait_log("log files reopened")
    svc.wait_log("[quick run ", name="panda-daemons.log")
    assert lock_holder(svc.pidfile) == pid
    svc.stop()


def test_a_failure_after_detaching_is_reported_by_start(svc: Service) -> None:
    svc.logdir.mkdir()
    (svc.logdir / "panda_daemon_stdout.log").mkdir()  # cannot be opened as a file
    result = svc.cli("start")
    assert result.returncode == 1
    assert "cannot start: cannot open a log file as user" in result.stderr
    assert "Is a directory" in result.stderr
    assert not svc.pidfile.exists() and svc.processes() == []

    (svc.logdir / "panda_daemon_stdout.log").rmdir()
    # valid settings, but a database whose schema is newer than this code: only the master
    # finds out, once the logs are open (a bad URL is refused before: tests/acceptance/
    # test_config_truth.py)
    database = svc.root / "future.sqlite"
    engine = engine_from_url(f"sqlite:///{database}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE daemon_schema SET version_num = '9999_future'"))
    engine.dispose()
    svc.write({"quick": {"module": "record", "period": 2}}, db_url=f"sqlite:///{database}")
    for args in (("start",), ("start", "--no-detach")):  # refused once the logs are open
        result = svc.cli(*args)
        assert result.returncode == 8, result.stderr
        assert "cannot start: database schema 9999_future" in result.stderr  # terminal/journal
    assert svc.log().count("cannot start: database schema 9999_future") == 2
    assert not svc.pidfile.exists() and svc.processes() == []


def test_not_enabled_fatal_config_and_restart(svc: Service) -> None:
    svc.write({"quick": {"module": "record", "period": 2}}, enable="False")
    result = svc.cli("start")
    assert result.returncode == 0 and "is not enabled" in result.stdout
    assert not svc.pidfile.exists() and svc.processes() == []

    svc.write({"quick": {"module": "record", "period": 2}}, n_proc="two")
    result = svc.cli("start")
    assert result.returncode == 2 and "n_proc" in result.stderr

    svc.write({"quick": {"module": "record", "period": 2}})
    pid = svc.start()
    svc.config.write_text(svc.config.read_text().replace('"quick": {', '"quick": {{'))
    result = svc.cli("restart")
    assert result.returncode == 2 and "not restarting" in result.stderr
    assert "invalid JSON" in result.stderr
    assert lock_holder(svc.pidfile) == pid
    svc.write({"quick": {"module": "record", "period": 2}})
    result = svc.cli("restart")
    assert result.returncode == 0, result.stderr
    assert f"stopped (master pid {pid})" in result.stdout
    assert not pid_alive(pid)
    assert lock_holder(svc.pidfile) not in (None, pid)
    svc.stop()


def test_no_detach_is_the_main_process_and_notifies_systemd(svc: Service) -> None:
    probe = svc.root / "probe" / "svcprobe"  # a script that shows what it inherited
    probe.mkdir(parents=True)
    (probe / "__init__.py").write_text("")
    (probe / "env.py").write_text(
        "import os\n\n\ndef main(argv=(), **_):\n"
        "    print('NOTIFY_SOCKET=' + os.environ.get('NOTIFY_SOCKET', 'unset'))\n")
    svc.env["PYTHONPATH"] = f"{probe.parent}{os.pathsep}{svc.env['PYTHONPATH']}"
    svc.config = svc.write({"env": {"module": "env", "period": 60}}, package="svcprobe")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(svc.root / "notify"))
    sock.settimeout(15)
    env = {**svc.env, "NOTIFY_SOCKET": str(svc.root / "notify")}
    proc = subprocess.Popen([*svc.command(), "start", "--no-detach"], env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={proc.pid}" in message
        assert lock_holder(svc.pidfile) == proc.pid
        svc.workers(proc.pid, 2)
        svc.wait_log("NOTIFY_SOCKET=unset", name="panda-daemons.log")  # only the master may
        svc.wait_log("master started on")
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        assert proc.wait(20) == 0  # inactive, not failed
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not svc.pidfile.exists()
    wait_for(lambda: not svc.processes(), 10, "the workers to end", interval=POLL)

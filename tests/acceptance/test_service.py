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
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from harness import REPO, pid_alive, wait_for
from servicekit import (
    POLL,
    RET_NOT_RUNNING,
    RET_PIDFILE,
    RET_STALE,
    RET_USER,
    Service,
    checked,
    events,
    title,
)
from sqlalchemy import text

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade
from pandaserver.service.pidfile import lock_holder, read_pid


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
    wait_for(lambda: title(master) == "panda_daemon: master", 10, "the master's title")
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

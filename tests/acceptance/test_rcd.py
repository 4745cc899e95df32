"""The init scripts ``rc.d/panda_daemon`` and ``rc.d/httpd-pandasrv``, run for real by sh."""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPO, pid_alive, wait_for
from servicekit import Service, checked

from pandaserver.service.pidfile import lock_holder

RC_DIR = REPO / "rc.d"
NOT_RUNNING, NOT_INSTALLED, USAGE = 3, 5, 2


class RcService(Service):
    """Settings in a sysconfig file, as an installation has them, not in the environment."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:  # a free port for the status web app
            probe.bind(("127.0.0.1", 0))
            self.web_port = probe.getsockname()[1]
        self.extra_sections = f"[daemon_web]\nbind = 127.0.0.1:{self.web_port}\n"
        super().__init__(root)
        self.sysconfig = root / "sysconfig"
        moved = {name: self.env.pop(name) for name in ("PANDA_LOCK_DIR", "PANDA_NO_ROOT")}
        self.sysconfig.write_text(
            "# as /etc/sysconfig/panda_server\n"
            f"PANDA_DAEMON='{self.python} -m pandaserver.commands.main'\n"
            f"PANDA_DAEMON_OPTIONS=\"-c {self.config}\"\n"
            + "".join(f"{name}={value}\n" for name, value in moved.items()))
        self.env["PANDA_SYSCONFIG"] = str(self.sysconfig)

    def rc(self, script: str, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(RC_DIR / script), *args], capture_output=True,
                              text=True, timeout=90, env=env or self.env,
                              stdin=subprocess.DEVNULL, cwd="/")

    def master(self) -> int | None:
        return lock_holder(self.pidfile)

    def web_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/api", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def rcsvc(tmp_path: Path) -> Iterator[RcService]:
    yield from checked(RcService(tmp_path))


def test_panda_daemon_start_status_reload_restart_stop(rcsvc: RcService) -> None:
    svc = rcsvc
    result = svc.rc("panda_daemon", "start")
    assert result.returncode == 0, result.stderr
    pid = svc.master()
    assert pid is not None and f"master pid {pid}" in result.stdout
    assert svc.pidfile.parent == svc.root / "run"  # PANDA_LOCK_DIR from the sysconfig file

    again = svc.rc("panda_daemon", "start")  # LSB: starting a running service succeeds
    assert again.returncode == 0 and "already running" in again.stdout
    assert svc.master() == pid
    status = svc.rc("panda_daemon", "status")
    assert status.returncode == 0 and f"running: master pid {pid}" in status.stdout

    svc.write({"quick": {"module": "record", "period": 2},
               "added": {"module": "record", "period": 2}})
    assert svc.rc("panda_daemon", "reload").returncode == 0
    svc.wait_log("reload: script added added")
    svc.wait_log("[added run ", name="panda-daemons.log")

    restart = svc.rc("panda_daemon", "restart")
    assert restart.returncode == 0, restart.stderr
    new = svc.master()
    assert new not in (None, pid) and not pid_alive(pid)

    stop = svc.rc("panda_daemon", "stop")
    assert stop.returncode == 0, stop.stderr  # the original returned 1 here
    assert f"stopped (master pid {new})" in stop.stdout
    assert not svc.pidfile.exists() and svc.processes() == []
    again = svc.rc("panda_daemon", "stop")
    assert again.returncode == 0 and "not running" in again.stdout
    assert svc.rc("panda_daemon", "status").returncode == NOT_RUNNING


def test_panda_daemon_refusals_and_exit_codes(rcsvc: RcService) -> None:
    svc = rcsvc
    for args in ((), ("bogus",), ("start", "stop")):
        result = svc.rc("panda_daemon", *args)
        assert result.returncode == USAGE and "usage:" in result.stderr

    bare = {"PATH": "/usr/bin:/bin", "PANDA_SYSCONFIG": str(svc.root / "none")}
    result = svc.rc("panda_daemon", "status", env=bare)
    assert result.returncode == NOT_INSTALLED and "not installed" in result.stderr

    svc.write({"quick": {"module": "record", "period": 2}}, enable="False")
    result = svc.rc("panda_daemon", "start")
    assert result.returncode == 0 and "is not enabled" in result.stdout
    assert not svc.pidfile.exists() and svc.processes() == []

    svc.write({"quick": {"module": "record", "period": 2}}, n_proc=0)
    result = svc.rc("panda_daemon", "start")
    assert result.returncode == 2 and "n_proc" in result.stderr

    svc.write({"quick": {"module": "record", "period": 2}})
    assert svc.rc("panda_daemon", "start").returncode == 0
    pid = svc.master()
    svc.write({"quick": {"module": "record", "period": 2}}, n_proc=0)
    result = svc.rc("panda_daemon", "reload")
    assert result.returncode == 2 and "not reloading" in result.stderr
    assert svc.master() == pid and "reload:" not in svc.log()
    assert svc.rc("panda_daemon", "stop").returncode == 0
    assert svc.processes() == []


def test_httpd_pandasrv_drives_the_web_server_and_the_daemon(rcsvc: RcService) -> None:
    svc = rcsvc
    result = svc.rc("httpd-pandasrv", "start")
    assert result.returncode == 0, result.stderr
    pid = svc.master()
    assert pid is not None and svc.web_answers()  # --detach returns once it answers

    assert svc.rc("httpd-pandasrv", "stop-httpd").returncode == 0
    wait_for(lambda: not svc.web_answers(), 10, "the web app to stop answering")
    assert svc.master() == pid
    again = svc.rc("httpd-pandasrv", "stop-httpd")  # not running: nothing to do, exit 0
    assert again.returncode == 0 and "not running" in again.stdout
    assert svc.rc("httpd-pandasrv", "start-httpd").returncode == 0
    assert svc.web_answers() and svc.master() == pid  # start-httpd returns once it answers

    assert svc.rc("httpd-pandasrv", "stop-daemon").returncode == 0
    assert svc.master() is None and svc.web_answers()  # the web app is left alone
    left = svc.processes()
    assert left and all("gunicorn" in " ".join(p.cmdline()) for p in left), left
    assert svc.rc("httpd-pandasrv", "start-daemon").returncode == 0
    assert svc.master() not in (None, pid)

    result = svc.rc("httpd-pandasrv", "stop")
    assert result.returncode == 0, result.stderr
    assert "panda-daemon stopped" in result.stdout and not svc.web_answers()
    assert not svc.pidfile.exists() and svc.processes() == []

    svc.write({"quick": {"module": "record", "period": 2}}, n_proc=0)
    result = svc.rc("httpd-pandasrv", "start")  # the daemon failed: so did start
    assert result.returncode == 2 and "n_proc" in result.stderr
    assert svc.rc("httpd-pandasrv", "stop").returncode == 0
    assert svc.rc("httpd-pandasrv", "restart-all").returncode == USAGE


def test_httpd_pandasrv_reports_a_web_app_that_cannot_start(rcsvc: RcService) -> None:
    svc = rcsvc
    with socket.socket() as squatter:  # another server holds the web app's port
        squatter.bind(("127.0.0.1", svc.web_port))
        squatter.listen()
        result = svc.rc("httpd-pandasrv", "start-httpd")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "panda-daemon web: " in result.stderr
        both = svc.rc("httpd-pandasrv", "start")  # the daemon starts; the web app does not
        assert both.returncode == 1, both.stdout + both.stderr
        assert svc.master() is not None
    result = svc.rc("httpd-pandasrv", "stop")
    assert result.returncode == 0, result.stderr
    assert svc.master() is None and not svc.pidfile.exists() and svc.processes() == []

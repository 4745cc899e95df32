"""A full log disk breaks neither the runs nor the master: the service logs to a 1 MB
tmpfs while a script prints 300 KB per run (root is needed to mount it; the test is
skipped, saying so, only when the mount is refused)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import wait_for
from prometheus_client.parser import text_string_to_metric_families
from servicekit import Service, checked, events

from pandaserver.config import load_config
from pandaserver.web.app import FleetApp
from pandaserver.web.settings import WebSettings


@pytest.fixture
def full_svc(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    svc.logdir.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(svc.logdir)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs as the log directory: {mount.stderr.strip()}")
    try:
        yield from checked(svc)
    finally:
        subprocess.run(["umount", "-l", str(svc.logdir)], capture_output=True)


def free_bytes(path: Path) -> int:
    import os

    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_full_log_disk_drops_lines_but_every_run_is_ok(full_svc: Service,
                                                         tmp_path: Path) -> None:
    svc = full_svc
    svc.config = svc.write({"chatty": {"module": "chatty", "period": 0.5, "timeout": 60},
                            "quick": {"module": "record", "period": 0.5}})
    master = svc.start()
    wait_for(lambda: free_bytes(svc.logdir) < 64 * 1024, 60, "the log disk to fill up")
    full_at = len(events(svc, "end", "chatty"))
    workers = {p.pid for p in svc.workers(master, 2)}
    wait_for(lambda: len(events(svc, "end", "chatty")) >= full_at + 6
             and len(events(svc, "end", "quick")) >= 6, 90,
             "runs going on with the disk full")
    assert {p.pid for p in svc.workers(master, 2)} == workers, "a worker died"

    status = svc.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("logging:"))
    assert "FAILING" in line and "No space left on device" in line, line
    dropped = int(line.split("; ")[1].split()[0])
    assert dropped > 1000, line

    fleet = svc.cli("fleet")
    assert "logs of test-server on this host: FAILING" in fleet.stdout or \
        "on this host: FAILING" in fleet.stdout, fleet.stdout
    check = svc.cli("fleet", "--check")
    assert "log lines dropped:" in check.stdout, check.stdout

    app = FleetApp(load_config(str(svc.config)), WebSettings())
    app.reader.state_dir = tmp_path / "state"
    seen = {}
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    body = b"".join(app(environ, lambda s, h: seen.update(s=s)))
    assert seen["s"] == "200 OK"
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode())
               for s in f.samples}
    assert samples["panda_daemon_master_log_failing"] == 1
    assert samples["panda_daemon_master_log_lines_dropped"] > 1000

    svc.stop()
    history = json.loads(svc.cli("history", "--json", "--limit", "1000").stdout)
    outcomes = {(row["script"], row["outcome"]) for row in history}
    assert outcomes <= {("chatty", "ok"), ("quick", "ok")}, [
        (r["script"], r["run_id"], r["outcome"], r["error"]) for r in history
        if r["outcome"] != "ok"]
    assert sum(1 for r in history if r["script"] == "chatty") >= full_at + 6

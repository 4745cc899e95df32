"""History is never dropped silently: a master whose state directory cannot be written
(a read-only mount here) says so at its start, and if the database is unreachable at its
stop the history it loses is in its exit status (11), for ``run`` and, through the pid file
the master leaves, for ``stop`` of a detached master. Real masters, real PostgreSQL made
unreachable, a real read-only tmpfs (root is needed to mount it; the tests are skipped,
saying so, only when the mount is refused)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import running_master, wait_for
from pg import PgCluster, url_text
from pgfleet import cut, fleet_config, restore
from servicekit import Service, events
from sqlalchemy import URL

from pandaserver import exitcodes


def mount_readonly(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                            str(directory)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs as the state directory:"
                    f" {mount.stderr.strip()}")


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@pytest.fixture
def readonly_state(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "rostate"
    mount_readonly(state)
    try:
        yield state
    finally:
        unmount(state)


def start_warning(state: Path) -> str:
    return (f"history: cannot write in the state directory {state} (Read-only file system):"
            " runs the master has not written to the database when it stops (during an"
            " outage) could not be kept for the next start and would be lost (exit 11)")


def test_run_says_at_start_and_exits_11_when_history_is_lost_at_stop(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster, readonly_state: Path) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"quick": {"module": "record", "period": 0.2}})
    dbname = str(pg_url.database)
    try:
        with running_master(cfg, tmp_path, server="solo",
                            extra_env={"PANDA_DAEMON_STATE_DIR": str(readonly_state)}) as master:
            master.wait_log(start_warning(readonly_state))
            master.wait_events(3, "end", "quick")
            cut(pg_cluster, dbname)
            master.wait_log("database unavailable", timeout=20)
            during = len(master.events("end", "quick"))
            master.wait_events(during + 3, "end", "quick", timeout=30)
            assert master.stop() == exitcodes.RET_HISTORY_LOST, master.log()[-3000:]
            log = master.log()
    finally:
        restore(pg_cluster, dbname)
    spool = readonly_state / "history-spool-solo.jsonl"
    assert f"and it cannot be kept in {spool}: Read-only file system: lost" in log
    assert "master stopped, exit 11: history of" in log
    # no spool existed: nothing to remove, and no message saying it could not be
    assert "cannot remove the history spool" not in log


def test_stop_reports_history_a_detached_master_lost(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    svc = Service(tmp_path)
    mount_readonly(tmp_path / "state")  # the service's PANDA_DAEMON_STATE_DIR
    dbname = str(pg_url.database)
    left = []
    try:
        service = svc
        service.config = service.write({"quick": {"module": "record", "period": 0.2}},
                                       db_url=url_text(pg_url), heartbeat_interval=1)
        upgrade = service.cli("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr
        service.start()
        service.wait_log(start_warning(tmp_path / "state"))
        wait_for(lambda: len(events(service, "end", "quick")) >= 3, 30, "three runs")
        cut(pg_cluster, dbname)
        service.wait_log("database unavailable", timeout=20)
        during = len(events(service, "end", "quick"))
        wait_for(lambda: len(events(service, "end", "quick")) >= during + 3, 30,
                 "runs during the outage")
        stop = service.cli("stop")
        assert stop.returncode == exitcodes.RET_HISTORY_LOST, stop.stdout + stop.stderr
        assert "panda-daemon stopped (master pid" in stop.stdout
        assert "panda-daemon: the master exited with status 11: history of" in stop.stderr
        assert "cannot be kept in" in stop.stderr and ": lost" in stop.stderr
        assert not service.pidfile.exists()  # read, reported and removed by stop
        again = service.cli("stop")  # said once
        assert again.returncode == 0 and "not running" in again.stdout, again.stderr
        assert "cannot remove the history spool" not in service.log()
    finally:
        left = svc.cleanup()
        restore(pg_cluster, dbname)
        unmount(tmp_path / "state")
    assert not left, f"processes left behind: {left}"

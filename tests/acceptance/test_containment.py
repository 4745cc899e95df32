"""Every process a run starts ends with the run: children, double forks, setsid daemons,
children of a worker that was SIGKILLed; across two masters sharing a real PostgreSQL; and
``stop`` returns 0 only once none is left.

The tests that matter run twice: with a cgroup per worker (this machine lets root make
them) and with ``PANDA_DAEMON_CGROUPS=off`` (process tree, session and environment marker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from harness import pid_alive, recorded, running_master, script_env, wait_for, write_config
from pg import url_text
from sqlalchemy import URL

from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.containment import proctable

MODES = {"cgroup": "auto", "marker": "off"}
MODE_LINE = {"cgroup": "containment: a cgroup per worker under",
             "marker": "containment: no cgroups (PANDA_DAEMON_CGROUPS=off)"}
SLACK = 3.0  # seconds of scheduling delay a loaded two-core machine may add


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def master_in(mode: str, cfg: Path, tmp_path: Path, **kwargs: Any) -> Any:
    extra = {"PANDA_DAEMON_CGROUPS": MODES[mode], **kwargs.pop("extra_env", {})}
    return running_master(cfg, tmp_path, extra_env=extra, **kwargs)


def fleet_config(tmp_path: Path, pg_url: URL, scripts: dict[str, dict[str, Any]]) -> Path:
    cfg = write_config(tmp_path, scripts, db_url=url_text(pg_url), heartbeat_interval=1)
    upgrade = subprocess.run([sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg), "db",
                              "upgrade"], capture_output=True, text=True, timeout=60,
                             env=script_env(tmp_path / "cli.jsonl"))
    assert upgrade.returncode == 0, upgrade.stderr
    return cfg


# ----- a daemon left by a script ----------------------------------------------------------
def test_a_setsid_daemon_left_by_a_script_is_gone_when_its_run_ends(tmp_path: Path,
                                                                     mode: str) -> None:
    cfg = write_config(tmp_path, {
        "d": {"module": "abuse", "period": 60, "arguments": ["daemon_stubborn"]},
        "tick": {"module": "record", "period": 0.5}})
    with master_in(mode, cfg, tmp_path) as master:
        master.wait_log(MODE_LINE[mode])
        daemon = master.wait_events(1, "start", "d")[0]["pids"][0]
        assert proctable.stat(daemon) is not None, "the script did leave a daemon"
        master.wait_log("d run 1 outcome=ok", timeout=20)
        # the run is recorded only once what it left is gone: no waiting here
        assert not pid_alive(daemon), "the run ended with its daemon still running"
        # an orphan, adopted by the master (a subreaper): the master collects its status
        wait_for(lambda: proctable.stat(daemon) is None, 5, "the master to reap the daemon")
        log = master.log()
        # named with its command line as read at that moment: a forked child may not have
        # exec'd its command yet (it then shows the worker's title), so only pid and run
        left = [line for line in log.splitlines()
                if f"d run 1 left 1 process: SIGTERM now, SIGKILL in 3 s: pid {daemon} (" in line]
        assert left, log
        assert f"d run 1: 1 process still running 3 s after SIGTERM: SIGKILL: pid {daemon}" \
               in log
        ticks = len(master.events("start", "tick"))
        master.wait_events(ticks + 2, "start", "tick")
        assert master.stop() == 0
        assert master.leftovers() == []


# ----- a worker SIGKILLed under a sync run, two masters, real PostgreSQL -----------------
class Sampler(threading.Thread):
    """Watches the process table: which lease generations have processes alive at once."""

    def __init__(self, scope: Path) -> None:
        super().__init__(daemon=True)
        self.scope = str(scope)  # only processes whose record file is under it: this test's
        self.stop_event = threading.Event()
        self.overlaps: list[tuple[float, dict[int, str]]] = []
        self.seen: dict[str, set[int]] = {}
        self.samples = 0

    def generations(self) -> dict[int, str]:
        found = {}
        for proc in proctable.scan().values():
            if not proc.ended:
                value = proctable.environ_value(proc.pid, "PANDA_TEST_GENERATION")
                record = proctable.environ_value(proc.pid, "PANDA_TEST_RECORD") or ""
                if value is not None and record.startswith(self.scope) and proctable.alive(proc):
                    found[proc.pid] = value
        return found

    def run(self) -> None:
        while not self.stop_event.is_set():
            found = self.generations()
            self.samples += 1
            for pid, generation in found.items():
                self.seen.setdefault(generation, set()).add(pid)
            if len(set(found.values())) > 1:
                self.overlaps.append((time.monotonic(), found))
            time.sleep(0.01)


def test_sync_run_whose_worker_is_sigkilled_leaves_nothing_and_never_overlaps(
        tmp_path: Path, pg_url: URL, mode: str) -> None:
    # each run starts a child and a setsid'd grandchild that ignores SIGTERM (both carry
    # the run's lease generation in their environment), then returns after 1 s, leaving
    # them: every run's end has something to terminate, and the first run's worker is killed
    cfg = fleet_config(tmp_path, pg_url, {"kids": {"module": "abuse", "period": 2, "sync": True,
                                                   "timeout": 60, "arguments": ["kids", 1]}})
    sampler = Sampler(tmp_path)
    sampler.start()
    try:
        with ExitStack() as stack:
            masters = [stack.enter_context(master_in(mode, cfg, tmp_path, server=name))
                       for name in ("a", "b")]

            def starts() -> list[dict[str, Any]]:
                return sorted((row for m in masters for row in m.events("start", "kids")),
                              key=lambda row: row["t"])

            first = wait_for(starts, 30, "a first run")[0]
            child, grandchild = first["pids"]
            os.kill(first["pid"], signal.SIGKILL)  # its worker, as the OOM killer would
            killed = time.monotonic()
            wait_for(lambda: not pid_alive(child) and not pid_alive(grandchild),
                     KILL_GRACE + SLACK, "the killed worker's child and grandchild to end")
            gone = time.monotonic()
            wait_for(lambda: len(starts()) >= 5, 90, "four more runs")
            for master in masters:
                master.wait_log(MODE_LINE[mode])
                assert master.stop() == 0
                assert master.leftovers() == []
    finally:
        sampler.stop_event.set()
        sampler.join(10)
    assert gone - killed <= KILL_GRACE + SLACK
    lost = [line for m in masters for line in m.log().splitlines()
            if "kids run " in line and "outcome=lost" in line]
    assert len(lost) == 1 and "worker killed by SIGKILL during the run" in lost[0], lost
    runs = starts()
    generations = [row["generation"] for row in runs]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    assert sampler.samples > 100
    # the sampler saw each run's processes, so the check is not vacuous (the first run's may
    # end within milliseconds of its worker's kill, between two samples on a loaded machine)
    for row in runs[1:-1]:
        assert sampler.seen.get(str(row["generation"])), (row, sampler.seen)
    assert not sampler.overlaps, f"two runs' processes alive at once: {sampler.overlaps[:3]}"


# ----- stop -------------------------------------------------------------------------------
class Service:
    """``panda-daemon start`` / ``stop`` on a pid file and log directory under ``root``."""

    def __init__(self, root: Path, scripts: dict[str, dict[str, Any]], mode: str) -> None:
        self.root = root
        self.record = root / "record.jsonl"
        self.pidfile = root / "run" / "panda_daemon.pid"
        self.config = write_config(root, scripts, stop_grace=2,
                                   extra=f"[server]\nlogdir = {root / 'logs'}\n")
        self.env = script_env(self.record, PANDA_NO_ROOT="1", PANDA_DAEMON_CGROUPS=MODES[mode],
                              PANDA_LOCK_DIR=str(self.pidfile.parent))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pandaserver.commands.main", "-c", str(self.config),
                               *args, "--pidfile", str(self.pidfile)], capture_output=True,
                              text=True, timeout=90, env=self.env, stdin=subprocess.DEVNULL)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [row for row in recorded(self.record)
                if row["event"] == "start" and row["name"] == name]

    def log(self) -> str:
        path = self.root / "logs" / "panda_daemon_stdout.log"
        return path.read_text(errors="replace") if path.exists() else ""


def test_stop_returns_only_once_a_runs_setsid_daemon_is_gone(tmp_path: Path, mode: str) -> None:
    svc = Service(tmp_path, {"hold": {"module": "abuse", "period": 60,
                                      "arguments": ["daemon_hang"]}}, mode)
    started = svc.cli("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        daemon = wait_for(lambda: svc.events("hold"), 30, "the script to start")[0]["pids"][0]
        assert pid_alive(daemon)
        stopped = svc.cli("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not pid_alive(daemon), "stop returned 0 with the script's daemon running"
        assert f"pid {daemon} (sleep 1000, run 1 of hold)" in svc.log()
        assert MODE_LINE[mode] in svc.log()
    finally:
        svc.cli("stop")


def test_stop_after_master_and_workers_died_kills_and_names_what_their_runs_left(
        tmp_path: Path, mode: str) -> None:
    svc = Service(tmp_path, {"hold": {"module": "abuse", "period": 60,
                                      "arguments": ["daemon_hang"]}}, mode)
    started = svc.cli("start")
    assert started.returncode == 0, started.stdout + started.stderr
    master_pid = int(started.stdout.split("master pid ")[1].split()[0])
    try:
        row = wait_for(lambda: svc.events("hold"), 30, "the script to start")[0]
        daemon, worker = row["pids"][0], row["pid"]
        # the worker cannot act on its lifeline while stopped: the master and its workers
        # die at once, as in an OOM kill of everything, and the daemon is left to init
        workers = [p for p in proctable.scan().values()  # the daemon is the master's child
                   if p.ppid == master_pid and p.pid != daemon]  # too (it is a subreaper)
        assert any(p.pid == worker for p in workers)
        for proc in workers:
            os.kill(proc.pid, signal.SIGSTOP)
        os.kill(master_pid, signal.SIGKILL)
        for proc in workers:
            os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(master_pid) and not pid_alive(worker), 10,
                 "the master and its worker to die")
        assert pid_alive(daemon), "nothing but stop was to end the daemon"
        stopped = svc.cli("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "panda-daemon is not running; removed the stale pid file" in stopped.stdout
        assert f"killing 1 process left after the master (SIGKILL): pid {daemon} (sleep 1000," \
               " run 1 of hold)" in stopped.stdout, stopped.stdout
        assert not pid_alive(daemon)
    finally:
        svc.cli("stop")


# ----- kill -9 of the master while a run has children --------------------------------------
ROUNDS = 8


def test_kill_9_of_the_master_mid_run_leaves_nothing_round_after_round(
        tmp_path: Path, mode: str) -> None:
    """The master dies by SIGKILL just as a run has started a child, with idle workers beside
    the busy one. Every worker sees its master gone at once; an idle one used to exit as soon
    as its channel closed, cutting short a sweep that had already killed the busy worker, so
    the run's child survived (about one round in thirty). Each round must leave nothing."""
    for round_ in range(ROUNDS):
        workdir = tmp_path / f"round-{round_}"
        workdir.mkdir()
        cfg = write_config(workdir, {"kids": {"module": "spawner", "period": 60}}, n_proc=4)
        with master_in(mode, cfg, workdir) as master:
            child = master.wait_events(1, "start", "kids")[0]["child"]
            wait_for(lambda: len(master.workers()) == 4, 15, "four workers")
            tree = master.tree()
            assert any(p.pid == child for p in tree)
            master.signal(signal.SIGKILL)
            wait_for(lambda: not any(pid_alive(p.pid) for p in tree), 10,  # noqa: B023
                     f"round {round_}: every worker and the run's child to die with the master")

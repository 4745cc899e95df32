"""Operating a fleet through the shared database: pause, resume, run-now, kill, drain, and
the crash-loop back-off (real masters, real PostgreSQL, real signals)."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from harness import MasterProcess, pid_alive, running_master, wait_for, write_config
from pg import PgCluster
from pgfleet import cli, fleet_config, fleet_events
from sqlalchemy import URL

from pandaserver.config import load_config
from pandaserver.service.hoststatus import local_status, render_local_status
from pandaserver.web.fleetview import FleetReader
from pandaserver.web.pages import fleet_page
from pandaserver.web.settings import WebSettings

FAST = {"heartbeat_interval": 1, "command_interval": 0.5}


def start(stack: ExitStack, cfg: Path, tmp_path: Path, *names: str) -> list[MasterProcess]:
    masters = [stack.enter_context(running_master(cfg, tmp_path, server=name)) for name in names]
    for master in masters:  # a heartbeat row each: they are live for the commands' --wait
        master.wait_log("database: ", timeout=30)
    wait_for(lambda: set(names) <= set(live(tmp_path, cfg)), 30, "every master's heartbeat")
    return masters


def live(tmp_path: Path, cfg: Path) -> list[str]:
    out = cli(tmp_path, cfg, "fleet", "--json")
    if out.returncode != 0:
        return []
    return [s["server"] for s in json.loads(out.stdout)["servers"] if s["alive"]]


def command(tmp_path: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(tmp_path, cfg, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def status(tmp_path: Path, server: str) -> dict[str, Any]:
    path = tmp_path / "state" / f"status-{server}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def script_status(tmp_path: Path, server: str, name: str) -> dict[str, Any]:
    return next(s for s in status(tmp_path, server)["scripts"] if s["name"] == name)


def shown_status(tmp_path: Path, server: str) -> str:
    """What `panda-daemon status` prints of this master (from its status file)."""
    data = local_status(server, tmp_path / "state")
    assert data is not None
    return render_local_status(data)


def starts_after(masters: list[MasterProcess], name: str, t: float) -> list[dict[str, Any]]:
    return [e for e in fleet_events(masters, "start", name) if e["t"] > t]


@pytest.mark.serial  # never early on gaps of 0.5 s between runs: run alone
def test_pause_stops_new_runs_fleet_wide_and_resume_restores_the_period(
        tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "tick": {"module": "record", "period": 0.5},
        "other": {"module": "record", "period": 0.5}}, n_proc=1, **FAST)
    with ExitStack() as stack:
        masters = start(stack, cfg, tmp_path, "a", "b")
        wait_for(lambda: {e["server"] for e in fleet_events(masters, "end", "tick")} ==
                 {"a", "b"}, 20, "tick on both servers")
        out = command(tmp_path, cfg, "pause", "tick", "--reason", "db maintenance", "--wait")
        assert "recorded as command" in out.stdout and "a: paused" in out.stdout \
            and "b: paused" in out.stdout
        paused_at = time.monotonic()
        # both servers acted (--wait): no run of tick starts anywhere, while `other` keeps
        # its period on both
        wait_for(lambda: len(starts_after(masters, "other", paused_at)) >= 12, 30,
                 "other keeps running")
        assert starts_after(masters, "tick", paused_at) == []
        for server in ("a", "b"):
            shown = script_status(tmp_path, server, "tick")
            assert shown["paused"] and shown["paused_reason"] == "db maintenance"
            assert "@" in shown["paused_by"]
        text = shown_status(tmp_path, "a")
        assert "PAUSED by" in text, text
        fleet = json.loads(command(tmp_path, cfg, "fleet", "--json").stdout)
        assert fleet["summary"]["paused"] == ["tick"]
        assert [(h["name"], h["server"], h["reason"]) for h in fleet["holds"]] == \
            [("tick", "*", "db maintenance")]
        assert "PAUSED by" in command(tmp_path, cfg, "fleet").stdout
        page = fleet_page(FleetReader(load_config(str(cfg)), WebSettings()).overview(), "", 30)
        assert "paused on every server" in page and "db maintenance" in page
        command(tmp_path, cfg, "resume", "tick", "--wait")
        resumed_at = time.monotonic()
        wait_for(lambda: {e["server"] for e in starts_after(masters, "tick", resumed_at)} ==
                 {"a", "b"}, 20, "tick on both servers again")
        wait_for(lambda: len([e for e in starts_after(masters, "tick", resumed_at)
                              if e["server"] == "a"]) >= 4, 20, "four runs of tick on a")
        on_a = [e["t"] for e in starts_after(masters, "tick", resumed_at) if e["server"] == "a"]
        assert all(b - a >= 0.5 - 0.05 for a, b in pairwise(on_a)), on_a  # never early
        for master in masters:
            assert master.stop() == 0


def test_run_now_runs_exactly_once_on_one_server(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "rare": {"module": "record", "period": 3600},
        "rare_sync": {"module": "record", "period": 3600, "sync": True}}, n_proc=1, **FAST)
    with ExitStack() as stack:
        masters = start(stack, cfg, tmp_path, "a", "b", "c")
        wait_for(lambda: len(fleet_events(masters, "end", "rare")) == 3
                 and len(fleet_events(masters, "end", "rare_sync")) == 1, 30, "first runs")
        command(tmp_path, cfg, "run-now", "rare", "--wait")
        command(tmp_path, cfg, "run-now", "rare_sync", "--wait")
        wait_for(lambda: len(fleet_events(masters, "end", "rare")) == 4
                 and len(fleet_events(masters, "end", "rare_sync")) == 2, 20, "the extra runs")
        # two later commands acted on by every master: each polled twice after the runs
        command(tmp_path, cfg, "resume", "rare", "--wait")
        command(tmp_path, cfg, "resume", "rare", "--wait")
        assert len(fleet_events(masters, "start", "rare")) == 4
        assert len(fleet_events(masters, "start", "rare_sync")) == 2
        listing = command(tmp_path, cfg, "commands").stdout
        assert "run-now" in listing and "taken: runs as soon as a worker is free" in listing
        for master in masters:
            assert master.stop() == 0


def test_kill_ends_the_tree_and_records_killed(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"stuck": {"module": "hang", "period": 3600,
                                                    "arguments": ["stubborn"]}},
                       n_proc=1, **FAST)
    with ExitStack() as stack:
        masters = start(stack, cfg, tmp_path, "a", "b")
        begun = wait_for(lambda: len(fleet_events(masters, "start", "stuck")) == 2 and
                         fleet_events(masters, "start", "stuck"), 30, "stuck running twice")
        out = command(tmp_path, cfg, "kill", "stuck", "--server", "a", "--reason", "hung on io",
                      "--wait", "--timeout", "60")
        assert "a: killed stuck run" in out.stdout, out.stdout
        on_a = next(e for e in begun if e["server"] == "a")
        wait_for(lambda: not pid_alive(on_a["pid"]) and not pid_alive(on_a["child"]), 20,
                 "the killed run's tree gone")
        on_b = next(e for e in begun if e["server"] == "b")
        assert pid_alive(on_b["child"]), "the run on b was not to be killed"
        wait_for(lambda: [r for r in json.loads(command(
            tmp_path, cfg, "history", "stuck", "--json").stdout) if r["outcome"] == "killed"],
            10, "the killed run in history")
        history = json.loads(command(tmp_path, cfg, "history", "stuck", "--json").stdout)
        killed = [r for r in history if r["outcome"] == "killed"]
        assert len(killed) == 1 and killed[0]["server"] == "a"
        assert "hung on io" in killed[0]["error"] and "@" in killed[0]["error"]
        assert "stuck run" in masters[0].log() and "killed by" in masters[0].log()
        for master in masters:
            master.stop()


@pytest.mark.serial  # a 2-s bound on gaps: run alone
def test_drain_moves_sync_scripts_with_no_gap_and_no_overlap(tmp_path: Path,
                                                             pg_url: URL) -> None:
    period = 0.5
    cfg = fleet_config(tmp_path, pg_url, {"shared": {"module": "record", "period": period,
                                                     "sync": True, "arguments": [0.05]}},
                       n_proc=1, **FAST)
    with ExitStack() as stack:
        masters = start(stack, cfg, tmp_path, "a", "b")
        wait_for(lambda: len(fleet_events(masters, "end", "shared")) >= 6, 30, "shared runs")
        # drain the server that runs it now (a lease tends to stay where it is released)
        busy = fleet_events(masters, "start", "shared")[-1]["server"]
        other = "b" if busy == "a" else "a"
        out = command(tmp_path, cfg, "drain", busy, "--reason", "kernel patch", "--wait")
        assert f"{busy}: draining" in out.stdout, out.stdout
        drained = time.monotonic()
        wait_for(lambda: len(starts_after(masters, "shared", drained)) >= 20, 30, "20 runs")
        assert {e["server"] for e in starts_after(masters, "shared", drained)} == {other}
        assert status(tmp_path, busy)["draining"]
        fleet = cli(tmp_path, cfg, "fleet").stdout
        assert "draining" in fleet, fleet
        command(tmp_path, cfg, "undrain", busy, "--wait")
        for master in masters:
            assert master.stop() == 0
    starts = fleet_events(masters, "start", "shared")
    ends = fleet_events(masters, "end", "shared")
    # the fleet's runs, before, during and after the drain: no period missed, no overlap
    for (a, b) in pairwise(starts):
        assert b["t"] - a["t"] <= 2 * period + 1.0, (a, b)  # loose: a loaded machine
    for end, nxt in zip(ends, starts[1:], strict=False):
        assert nxt["t"] >= end["t"] - 0.01, (end, nxt)


def test_crash_loops_are_backed_off_and_flagged_healthy_script_keeps_schedule(
        tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "segv": {"module": "segfault", "period": 0.2},
        "dies": {"module": "dies_in_worker", "period": 0.2},
        "broken": {"module": "broken_import", "period": 0.2},
        "healthy": {"module": "record", "period": 1}}, n_proc=2, **FAST)
    with ExitStack() as stack:
        (master,) = start(stack, cfg, tmp_path, "a")
        began = time.monotonic()

        def flagged() -> bool:
            scripts = {s["name"]: s for s in status(tmp_path, "a")["scripts"]}
            return all(scripts[n]["crash_looping"] for n in ("segv", "dies", "broken"))

        wait_for(flagged, 60, "the three crash-looping scripts flagged")
        wait_for(lambda: time.monotonic() - began >= 20, 30, "20 s of crash loops")
        healthy = [e["t"] for e in master.events("start", "healthy")]
        spawned = len([line for line in master.log().splitlines()
                       if "worker" in line and " started (pid " in line])
        elapsed = time.monotonic() - began
        check = cli(tmp_path, cfg, "fleet", "--check")
        text = shown_status(tmp_path, "a")
        assert master.stop() == 0
    # unbounded, a worker per 0.2-s period of segv and dies: 200 in 20 s
    assert spawned <= 40, spawned
    assert len(master.events("start", "segv")) <= 12, "segv was not backed off"
    assert len(healthy) >= elapsed / 1 - 6, (len(healthy), elapsed)
    assert check.returncode != 0 and "crash-looping" in check.stdout, check.stdout
    assert "CRASH-LOOPING" in text, text


def test_restart_workers_replaces_every_worker_one_at_a_time_and_lets_runs_finish(
        tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "gate": {"module": "gate", "period": 3600, "timeout": 600},
        "tick": {"module": "record", "period": 0.3}}, n_proc=2, **FAST)
    with ExitStack() as stack:
        (master,) = start(stack, cfg, tmp_path, "a")
        gate = wait_for(lambda: master.events("start", "gate"), 30, "gate running")[0]
        master.wait_events(2, "end", "tick")
        before = {p.pid for p in master.workers()}
        assert gate["pid"] in before and len(before) == 2
        out = command(tmp_path, cfg, "--server-name", "a", "restart-workers", "--wait")
        assert "a: recycling 2 worker(s)" in out.stdout, out.stdout
        master.wait_log("recycled (restart-workers) after its run", timeout=30)
        # the idle worker is replaced; the busy one keeps its run going
        wait_for(lambda: {e["pid"] for e in master.events("start", "tick")} - before, 30,
                 "tick run by a new worker")
        assert pid_alive(gate["pid"]) and not master.events("end", "gate")
        Path(f"{master.record}.go").touch()  # the gate run ends by itself
        wait_for(lambda: not ({p.pid for p in master.workers()} & before)
                 and len(master.workers()) == 2, 30, "both workers replaced")
        log = master.log()
        assert "gate run 1 outcome=ok" in log, log
        # one at a time: the second worker is let go only after the first one's successor
        first = log.index("recycled (restart-workers)")
        second = log.index("recycled (restart-workers)", first + 1)
        assert "started (pid" in log[first:second], log[first:second]
        assert master.stop() == 0


def test_commands_say_the_schema_is_missing_and_exit_8_until_db_upgrade(tmp_path: Path) -> None:
    """The error path both kinds of command share: a database without the tables (the
    default SQLite file of the state directory) is refused with exit 8 and what to run."""
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}})
    for args in (("pause", "tick"), ("commands",)):
        refused = cli(tmp_path, cfg, *args)
        assert refused.returncode == 8, refused.stdout + refused.stderr
        assert "panda-daemon db upgrade" in refused.stderr and not refused.stdout
    command(tmp_path, cfg, "db", "upgrade")
    assert "recorded as command 1" in command(tmp_path, cfg, "pause", "tick").stdout
    assert "pause tick by" in command(tmp_path, cfg, "commands").stdout


def test_a_command_row_wakes_a_listening_master_and_one_not_notified_is_read_on_reconnect(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    """PostgreSQL pushes the commands: with the safety-net read 300 s away, only the
    notification explains an acknowledgement within seconds. A command recorded without
    one (an older release's CLI, or a notification sent while the master did not listen)
    is read when the master listens again, after its listening connection is cut."""
    cfg = fleet_config(tmp_path, pg_url, {"tick": {"module": "record", "period": 600}},
                       n_proc=1, heartbeat_interval=1, command_interval=300)
    db = pg_url.database

    def listeners() -> list[int]:
        return [int(pid) for (pid,) in pg_cluster.sql(
            "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN panda_daemon_command'"
            f" AND datname = '{db}'")]

    with ExitStack() as stack:
        (master,) = start(stack, cfg, tmp_path, "a")
        [listening] = wait_for(listeners, 30, "the master listening")
        # the reads at start and after listening may still see this one: the next cannot
        command(tmp_path, cfg, "pause", "tick", "--wait", "--timeout", "20")
        out = command(tmp_path, cfg, "resume", "tick", "--wait", "--timeout", "20")
        assert "a: running" in out.stdout, out.stdout
        assert "each acts at once (notified by the database)" in out.stdout, out.stdout

        # recorded as an older CLI does, with no NOTIFY; then the listening connection ends
        [(command_id,)] = pg_cluster.sql(
            "INSERT INTO daemon_command (verb, target, requested_by, requested_at)"
            " VALUES ('resume', 'tick', 'old-cli', now()) RETURNING id", db)
        pg_cluster.sql(f"SELECT pg_terminate_backend({listening})", db)
        wait_for(lambda: pg_cluster.sql(
            f"SELECT note FROM daemon_command_ack WHERE command_id = {command_id}", db), 20,
            "the command read after listening again")
        assert [pid for pid in wait_for(listeners, 20, "listening again") if pid != listening]
        assert master.stop() == 0

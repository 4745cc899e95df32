"""Sync scripts across several real masters sharing one real PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg2
from harness import MasterProcess, running_master, script_env, wait_for, write_config
from pg import PgCluster, url_text
from sqlalchemy import URL

EPS = 0.05


def fleet_config(tmp_path: Path, pg_url: URL, scripts: dict[str, dict[str, Any]],
                 **daemon: Any) -> Path:
    daemon.setdefault("heartbeat_interval", 1)
    cfg = write_config(tmp_path, scripts, db_url=url_text(pg_url), **daemon)
    upgrade = cli(tmp_path, cfg, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    return cfg


def cli(tmp_path: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                           *args], capture_output=True, text=True, timeout=60,
                          env=script_env(tmp_path / "cli.jsonl"), stdin=subprocess.DEVNULL)


def fleet_events(masters: list[MasterProcess], event: str, name: str) -> list[dict[str, Any]]:
    rows = []
    for master in masters:
        for row in master.events(event, name):
            rows.append({**row, "server": master.record.stem.removeprefix("record-")})
    return sorted(rows, key=lambda r: r["t"])


def start_fleet(stack: ExitStack, cfg: Path, tmp_path: Path, servers: dict[str, str]
                ) -> list[MasterProcess]:
    return [stack.enter_context(running_master(
        cfg, tmp_path, server=name, extra_env={"PANDA_DAEMON_CLOCK_OFFSET": offset}))
        for name, offset in servers.items()]


def test_each_period_served_once_across_masters_with_skewed_clocks(
        tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"shared": {"module": "record", "period": 1.0,
                                                     "sync": True, "arguments": [0.05]}})
    with ExitStack() as stack:
        # three servers whose wall clocks disagree by minutes
        masters = start_fleet(stack, cfg, tmp_path, {"a": "0", "b": "300", "c": "-420"})
        wait_for(lambda: len(fleet_events(masters, "end", "shared")) >= 8, 40,
                 "8 fleet-wide runs")
        locks = json.loads(cli(tmp_path, cfg, "locks", "--json").stdout)
        fleet = json.loads(cli(tmp_path, cfg, "fleet", "--json").stdout)
        for master in masters:
            assert master.stop() == 0
    starts = fleet_events(masters, "start", "shared")
    ends = fleet_events(masters, "end", "shared")
    times = [s["t"] for s in starts]
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= 1.0 - EPS, f"two runs in one period: {gaps}"
    assert max(gaps[1:]) <= 1.0 + 0.6, f"a period went unserved: {gaps}"
    for end, nxt in zip(ends, starts[1:], strict=False):
        assert end["t"] <= nxt["t"], "runs of a sync script overlapped"
    offsets = {s["server"]: s["clock_offset"] for s in fleet["servers"]}
    for server, skew in (("a", 0), ("b", 300), ("c", -420)):  # seen, and harmless
        assert abs(offsets[server] - skew) < 5, offsets
    generations = [s["generation"] for s in starts]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    assert [row["name"] for row in locks] == ["shared"]
    history = json.loads(cli(tmp_path, cfg, "history", "shared", "--json", "--limit", "500").stdout)
    ok = [row for row in history if row["outcome"] == "ok"]
    assert len(ok) == len(starts)
    assert {row["server"] for row in ok} == {s["server"] for s in starts}
    for row in ok:  # every time is on the database clock: due <= start <= end
        assert row["due_at"] is not None and row["generation"] is not None
        assert row["due_at"] <= row["started_at"] <= row["ended_at"], row


def test_overrun_sync_runs_never_overlap_and_follow_at_once(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"slow": {"module": "record", "period": 0.5,
                                                   "sync": True, "timeout": 10,
                                                   "arguments": [1.0]}})
    with ExitStack() as stack:
        masters = start_fleet(stack, cfg, tmp_path, {"a": "0", "b": "0"})
        wait_for(lambda: len(fleet_events(masters, "end", "slow")) >= 4, 40, "4 runs")
    starts = fleet_events(masters, "start", "slow")
    ends = fleet_events(masters, "end", "slow")
    for end, nxt in zip(ends, starts[1:], strict=False):
        assert end["t"] <= nxt["t"], "runs of a sync script overlapped"
        assert nxt["t"] - end["t"] < 0.5, "the next run did not follow the overrun at once"


def test_killed_master_frees_the_script_at_lease_expiry(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"long": {"module": "record", "period": 1.0,
                                                   "sync": True, "timeout": 2,
                                                   "arguments": [30]}}, lease_grace=1)
    with ExitStack() as stack:
        masters = start_fleet(stack, cfg, tmp_path, {"a": "0", "b": "0"})
        first = wait_for(lambda: fleet_events(masters, "start", "long"), 30, "a first run")[0]
        holder = next(m for m in masters if m.record.stem.endswith(first["server"]))
        other = next(m for m in masters if m is not holder)
        holder.signal(signal.SIGKILL)
        second = other.wait_events(1, "start", "long", timeout=30)[0]
    assert second["t"] >= first["t"] + 3.0 - EPS, "taken over before the lease expired"
    assert second["t"] <= first["t"] + 3.0 + 1.6, "not taken over soon after expiry"


def test_database_outage_skips_sync_keeps_others_and_recovers(tmp_path: Path, pg_url: URL,
                                                              pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "sync_s": {"module": "record", "period": 0.3, "sync": True},
        "local_n": {"module": "record", "period": 0.3}})
    dbname = str(pg_url.database)

    def admin(sql: str) -> None:
        conn = psycopg2.connect(**pg_cluster.dsn("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
        conn.close()

    with running_master(cfg, tmp_path, server="solo") as master:
        master.wait_events(3, "start", "sync_s")
        admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'")
        master.wait_log("database unavailable", timeout=20)
        synced = len(master.events("start", "sync_s"))
        local = len(master.events("start", "local_n"))
        master.wait_events(local + 12, "start", "local_n", timeout=30)
        assert len(master.events("start", "sync_s")) <= synced + 1  # at most one in flight
        warnings = [line for line in master.log().splitlines()
                    if " WARNING " in line and "database unavailable" in line]
        assert len(warnings) == 1, "one warning per outage"
        admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        master.wait_log("database available again", timeout=20)
        master.wait_events(synced + 3, "start", "sync_s", timeout=20)
        assert pg_cluster.password not in master.log()
    conn = psycopg2.connect(**{**pg_cluster.dsn(dbname)})
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM daemon_run WHERE script = 'local_n' AND outcome = 'ok'")
        (rows,) = cur.fetchone()
    conn.close()
    assert rows >= local + 12, "history written during the outage was lost"


def test_newer_schema_refuses_to_start(tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"a": {"module": "record", "period": 5}})
    conn = psycopg2.connect(**pg_cluster.dsn(str(pg_url.database)))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE daemon_schema SET version_num = '9999_future'")
    conn.close()
    result = cli(tmp_path, cfg, "run")
    assert result.returncode == 8
    assert "newer" in result.stderr and "9999_future" in result.stderr

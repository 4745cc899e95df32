"""Sync scripts across several real masters sharing one real PostgreSQL."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from harness import running_master, wait_for
from pg import PgCluster
from pgfleet import (
    cli,
    cut,
    fleet_config,
    fleet_events,
    granted,
    log_grants,
    restore,
    start_fleet,
)
from sqlalchemy import URL

from pandaserver.db.base.servertime import due_tolerance

EPS = 0.05


def with_ends(starts: list[dict[str, Any]], ends: list[dict[str, Any]]
              ) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each start (by time) with its own end: the first end its worker (one run at a time)
    recorded after it; None when it has none."""
    later: dict[int, list[dict[str, Any]]] = {}
    for end in sorted(ends, key=lambda e: e["t"], reverse=True):
        later.setdefault(end["pid"], []).append(end)
    runs = []
    for start in starts:
        own = later.get(start["pid"], [])
        while own and own[-1]["t"] < start["t"]:
            own.pop()
        runs.append((start, own.pop() if own else None))
    return runs


def test_each_period_served_once_across_masters_whose_clocks_disagree(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    """Three masters whose wall clocks are minutes and hours apart, and are stepped while
    they run, share a 0.2-s sync script for hundreds of periods: every period is served
    once, by one server, with no overlap (leases are timed by the database clock alone)."""
    period = 0.2
    cfg = fleet_config(tmp_path, pg_url, {"shared": {"module": "record", "period": period,
                                                     "sync": True, "arguments": [0.02]}},
                       n_proc=1)
    log_grants(pg_cluster, pg_url)
    with ExitStack() as stack:
        masters = start_fleet(stack, cfg, tmp_path, {"a": "+0", "b": "+300", "c": "-7h"})
        wait_for(lambda: len(fleet_events(masters, "end", "shared")) >= 120, 90, "120 runs")
        # step two clocks while they run, as NTP or an operator would
        (tmp_path / "clock-b").write_text("-2h\n")
        (tmp_path / "clock-c").write_text("+45m\n")
        time.sleep(1.5)  # libfaketime re-reads its file every second
        stepped = time.monotonic()
        wait_for(lambda: len([e for e in fleet_events(masters, "end", "shared")
                              if e["t"] > stepped]) >= 120, 90, "120 runs after the step")
        wait_for(lambda: {s["server"]: s["clock_offset"] for s in json.loads(
            cli(tmp_path, cfg, "fleet", "--json").stdout)["servers"]}.get("b", 0) < -3600, 20,
            "b's stepped clock in its heartbeat")
        fleet = json.loads(cli(tmp_path, cfg, "fleet", "--json").stdout)
        for master in masters:
            assert master.stop() == 0
    starts = fleet_events(masters, "start", "shared")
    ends = fleet_events(masters, "end", "shared")
    assert len(starts) >= 240
    assert len({s["server"] for s in starts}) >= 2, "the period was not contested"
    # Every grant, as the database logged it (exact, on its clock): never closer to the
    # previous one than the period less the tolerance (a grant on time keeps the grid, a
    # late one counts the period from itself: docs/scheduling.md), and each run belongs to
    # one grant of the server that ran it. (The times the scripts record add each run's
    # dispatch jitter: they show overlaps, not periods.)
    grants = granted(pg_cluster, pg_url)
    assert len(grants) >= len(starts)
    floor = timedelta(seconds=period - due_tolerance(period))
    for (_, at_a, _), (_, at_b, _) in pairwise(grants):
        assert at_b - at_a >= floor, f"two grants closer than {floor}: {at_a} {at_b}"
    owner = {generation: server for generation, _, server in grants}
    assert all(owner[s["generation"]] == s["server"] for s in starts)
    runs = with_ends(starts, ends)
    for (start, end), (nxt, _) in pairwise(runs):
        assert end is not None, f"a run never ended: {start}"
        assert end["t"] <= nxt["t"], f"runs of a sync script overlapped: {start} to {end}, {nxt}"
    generations = [s["generation"] for s in starts]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)
    offsets = {s["server"]: s["clock_offset"] for s in fleet["servers"]}
    # the clocks the masters read really were apart: their heartbeats show it
    assert abs(offsets["a"]) < 5 and abs(offsets["b"] + 7200) < 5 and abs(offsets["c"] - 2700) < 5, \
        offsets


@pytest.mark.serial  # a 2-s bound: run alone
def test_overrun_sync_runs_never_overlap_and_follow_at_once(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"slow": {"module": "record", "period": 0.5,
                                                   "sync": True, "timeout": 10,
                                                   "arguments": [1.0]}})
    with ExitStack() as stack:
        masters = start_fleet(stack, cfg, tmp_path, {"a": "+0", "b": "+0"})
        wait_for(lambda: len(fleet_events(masters, "end", "slow")) >= 4, 40, "4 runs")
    starts = fleet_events(masters, "start", "slow")
    ends = fleet_events(masters, "end", "slow")
    runs = with_ends(starts, ends)
    for (start, end), (nxt, _) in pairwise(runs):
        assert end is not None, f"a run never ended: {start}"
        assert end["t"] <= nxt["t"], f"runs of a sync script overlapped: {start} to {end}, {nxt}"
        # at once: a bound generous enough for a loaded machine (the figure: benchmarks)
        assert nxt["t"] - end["t"] < 2.0, "the next run did not follow the overrun at once"


def test_database_outage_skips_sync_keeps_others_and_recovers(tmp_path: Path, pg_url: URL,
                                                              pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, {
        "sync_s": {"module": "record", "period": 0.3, "sync": True},
        "local_n": {"module": "record", "period": 0.3}})
    dbname = str(pg_url.database)
    with running_master(cfg, tmp_path, server="solo") as master:
        master.wait_events(3, "start", "sync_s")
        cut(pg_cluster, dbname)
        master.wait_log("database unavailable", timeout=20)
        synced = len(master.events("start", "sync_s"))
        local = len(master.events("start", "local_n"))
        master.wait_events(local + 12, "start", "local_n", timeout=30)
        assert len(master.events("start", "sync_s")) <= synced + 1  # at most one in flight
        warnings = [line for line in master.log().splitlines()
                    if " WARNING " in line and "database unavailable" in line]
        assert len(warnings) == 1, "one warning per outage"
        restore(pg_cluster, dbname)
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

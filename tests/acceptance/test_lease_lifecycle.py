"""A sync script's lease through the CLI, on a real PostgreSQL: released at a clean stop,
taken by ``run-once`` (exit 7 when another server holds it, ``--ignore-lease`` overrides),
and a master that starts or stays through an outage (docs/database.md).

Every lease here would expire a minute or more after it was taken, so whatever happens
within seconds happened by a release, never by an expiry.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from harness import recorded, running_master, script_env, wait_for
from pg import PgCluster
from pgfleet import cli, cut, fleet_config, restore
from sqlalchemy import URL

SOON = 10.0  # seconds: "at once" on a loaded machine; a lease here lives 60 s or more
LEASE = {"timeout": 120}  # with lease_ttl = 60: no lease here expires within a minute


def lease(tmp_path: Path, cfg: Path, name: str) -> dict[str, Any]:
    result = cli(tmp_path, cfg, "locks", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return next(row for row in rows if row["name"] == name)


def history(tmp_path: Path, cfg: Path, name: str) -> list[dict[str, Any]]:
    result = cli(tmp_path, cfg, "history", name, "--json", "--limit", "100")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def records(path: Path, event: str, name: str) -> list[dict[str, Any]]:
    return [row for row in recorded(path) if row["event"] == event and row["name"] == name]


def test_a_clean_stop_releases_the_lease_at_once(tmp_path: Path, pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, lease_ttl=60, scripts={
        "long": {"module": "record", "period": 1.0, "sync": True, **LEASE, "arguments": [60]}},
        stop_grace=0.5)
    with ExitStack() as stack:
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        first = a.wait_events(1, "start", "long", timeout=30)[0]
        b = stack.enter_context(running_master(cfg, tmp_path, server="b"))
        b.wait_log("long: lease held by a", timeout=30)  # b is refused while a holds it
        held = lease(tmp_path, cfg, "long")
        assert held["held"] and held["owner_server"] == "a"
        stopping = time.monotonic()
        a.signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0
        second = b.wait_events(1, "start", "long", timeout=SOON)[0]
        assert second["t"] - stopping < SOON
        after = lease(tmp_path, cfg, "long")
    assert a.outcomes("long") == ["lost"] and "killed at shutdown" in a.log()
    assert first["generation"] == held["generation"]
    assert second["generation"] > held["generation"] and after["owner_server"] == "b"
    rows = history(tmp_path, cfg, "long")
    lost = [r for r in rows if r["server"] == "a"]
    assert [r["outcome"] for r in lost] == ["lost"] and lost[0]["generation"] == held["generation"]


@pytest.mark.serial  # it must end within the 60-s period of its grant: alone
def test_run_once_takes_the_lease_and_exits_7_when_another_server_holds_it(
        tmp_path: Path, pg_url: URL) -> None:
    job = {"period": 60, "sync": True, **LEASE}
    # "one" runs the script under cfg: it waits for a file, so the test decides when it ends
    cfg = fleet_config(tmp_path, pg_url, lease_ttl=60, scripts={"job": {**job, "module": "gate"}})
    quick = fleet_config(tmp_path / "quick", pg_url, {"job": {**job, "module": "record"}},
                         upgrade=False, lease_ttl=60)
    record = tmp_path / "cli.jsonl"
    once = subprocess.Popen(
        [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg), "--server-name",
         "one", "run-once", "job"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=script_env(record), stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: records(record, "start", "job"), 30, "run-once to start the script")
        held = lease(tmp_path, cfg, "job")
        assert held["held"] and held["owner_server"] == "one"

        refused = cli(tmp_path, quick, "run-once", "job", server="two")
        assert refused.returncode == 7, refused.stderr
        assert "job cannot run now: its lease is held by one" in refused.stderr
        assert "--ignore-lease" in refused.stderr
        assert len(records(record, "start", "job")) == 1, "it ran without the lease"

        ignoring = cli(tmp_path, quick, "run-once", "job", "--ignore-lease", server="three")
        assert ignoring.returncode == 0, ignoring.stderr
        assert len(records(record, "start", "job")) == 2
        untouched = lease(tmp_path, cfg, "job")  # --ignore-lease neither took nor freed it
        assert untouched["held"] and untouched["owner_server"] == "one"
        assert untouched["generation"] == held["generation"]
        Path(str(record) + ".go").touch()  # now the script of "one" ends
        assert once.wait(60) == 0, once.stdout.read() if once.stdout else ""
    finally:
        if once.poll() is None:
            once.kill()
            once.wait()
        if once.stdout:
            once.stdout.close()
    released = lease(tmp_path, cfg, "job")
    assert not released["held"], "run-once left its lease held until it expires"
    assert released["generation"] == held["generation"]
    # released, but the period counts fleet-wide from that grant: not due again yet
    early = cli(tmp_path, quick, "run-once", "job", server="two")
    assert early.returncode == 7 and "it is not due fleet-wide for another" in early.stderr
    rows = {(r["server"], r["outcome"], r["generation"]) for r in history(tmp_path, cfg, "job")}
    assert ("one", "ok", held["generation"]) in rows
    assert ("three", "ok", None) in rows  # --ignore-lease: no lease, no generation
    # a refused attempt is no run: it writes no history row (exit 7 and stderr say why)
    assert not any(server == "two" for server, _, _ in rows)
    assert {outcome for _, outcome, _ in rows} == {"ok"}


def test_a_master_started_during_an_outage_runs_and_recovers_by_itself(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, lease_ttl=60, scripts={
        "sync_s": {"module": "record", "period": 0.5, "sync": True},
        "local_n": {"module": "record", "period": 0.5}})
    dbname = str(pg_url.database)
    cut(pg_cluster, dbname)
    try:
        with running_master(cfg, tmp_path, server="solo") as master:
            master.wait_log("database unavailable", timeout=30)
            master.wait_log("master started on")
            master.wait_events(3, "start", "local_n", timeout=30)  # others run meanwhile
            assert master.events("start", "sync_s") == [], "a sync script ran without a lease"
            assert master.proc.poll() is None
            restore(pg_cluster, dbname)
            master.wait_log("database available again", timeout=30)
            master.wait_events(2, "start", "sync_s", timeout=30)
            local = len(master.events("end", "local_n"))
            assert master.stop() == 0
    finally:
        restore(pg_cluster, dbname)
    rows = history(tmp_path, cfg, "local_n")
    assert len([r for r in rows if r["outcome"] == "ok"]) >= local, "history of the outage lost"
    assert {r["outcome"] for r in history(tmp_path, cfg, "sync_s")} == {"ok"}


@pytest.mark.serial  # the lease read and the cut must come within the 5-s run: alone
def test_a_release_that_failed_in_an_outage_is_retried_when_it_returns(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, lease_ttl=60, scripts={
        "job": {"module": "record", "period": 60, "sync": True, **LEASE, "arguments": [5.0]}})
    dbname = str(pg_url.database)
    try:
        with running_master(cfg, tmp_path, server="solo") as master:
            master.wait_events(1, "start", "job", timeout=30)
            held = lease(tmp_path, cfg, "job")
            assert held["held"] and held["owner_server"] == "solo"
            cut(pg_cluster, dbname)
            master.wait_log("database unavailable", timeout=30)
            master.wait_log("job run 1 outcome=ok", timeout=30)  # released (or tried) before
            assert master.events("end", "job"), "the run ended after the outage began"
            restore(pg_cluster, dbname)
            master.wait_log("database available again", timeout=30)
            wait_for(lambda: not lease(tmp_path, cfg, "job")["held"], SOON,
                     "the failed release to be retried")
            assert master.proc.poll() is None
    finally:
        restore(pg_cluster, dbname)
    released = lease(tmp_path, cfg, "job")
    assert released["generation"] == held["generation"]  # released, not expired and re-taken

"""Every dispatched run gets exactly one history row with a final outcome, also when its
master is killed with SIGKILL or stopped during a database outage (real masters, real
PostgreSQL or SQLite, real signals)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from harness import MasterProcess, running_master, wait_for, write_config
from pg import PgCluster
from pgfleet import cli, cut, fleet_config, restore
from sqlalchemy import URL, Engine

from pandaserver.daemons.fleet.history.keeper import LOST_AFTER_BEATS
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runrecords import LOST, OK, RUNNING, RunRow


def start_fleet(stack: ExitStack, cfg: Path, tmp_path: Path, names: list[str]
                ) -> list[MasterProcess]:
    return [stack.enter_context(running_master(cfg, tmp_path, server=name)) for name in names]


@pytest.fixture
def pg_engine_of(pg_url: URL) -> Iterator[Engine]:
    engine = engine_from_url(pg_url)
    yield engine
    engine.dispose()


def runs_of(engine: Engine, master: MasterProcess | None = None,
            script: str | None = None) -> list[RunRow]:
    rows = HistoryStore(engine).query(script, limit=1000)
    if master is not None:
        rows = [r for r in rows if r.master_pid == master.proc.pid]
    return sorted(rows, key=lambda r: (r.master_pid or 0, r.run_id or 0))


def open_row(engine: Engine, master: MasterProcess, script: str) -> RunRow | None:
    found = [r for r in runs_of(engine, master, script) if r.outcome == RUNNING]
    return found[0] if found else None


def test_kill_9_mid_run_gives_a_lost_row_within_the_heartbeat_timeout(
        tmp_path: Path, pg_url: URL, pg_engine_of: Engine) -> None:
    interval = 1.0
    cfg = fleet_config(tmp_path, pg_url, {
        "long": {"module": "record", "period": 1.0, "timeout": 120, "arguments": [60]}},
        heartbeat_interval=interval)
    with ExitStack() as stack:
        victim, witness = start_fleet(stack, cfg, tmp_path, ["a", "b"])
        running = wait_for(lambda: open_row(pg_engine_of, victim, "long"), 20,
                           "the victim's running row")
        assert running.run_id == 1 and running.ended_at is None
        witness.wait_events(1, "start", "long", timeout=20)  # a sweeper runs beside it
        # a live master's open run is never closed, however long it runs
        deadline = time.monotonic() + (LOST_AFTER_BEATS + 1) * interval
        while time.monotonic() < deadline:  # longer than the heartbeat timeout, alive
            assert open_row(pg_engine_of, victim, "long") is not None, "closed while alive"
            time.sleep(0.2)
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()

        def lost() -> RunRow | None:
            rows = [r for r in runs_of(pg_engine_of, victim, "long") if r.run_id == 1]
            return rows[0] if rows and rows[0].outcome == LOST else None

        row = wait_for(lost, 30, "the killed master's run closed as lost")
        took = time.monotonic() - killed
        assert witness.proc.poll() is None
    assert row.error is not None and "no heartbeat" in row.error, row.error
    # one heartbeat timeout (LOST_AFTER_BEATS intervals) plus one sweep interval, and the
    # load of this shared machine
    assert took <= (LOST_AFTER_BEATS + 1) * interval + 5, f"closed {took:.1f} s after the kill"
    print(f"lost row {took:.2f} s after kill -9")
    assert len([r for r in runs_of(pg_engine_of, victim) if r.run_id == 1]) == 1


# the holder may be killed between a grant and its run's start (above all under load): the
# grant itself writes the run's row (db/stores/grantrun.py), so no generation is left
# without one
def test_sync_runs_of_a_killed_master_leave_no_generation_without_a_row(
        tmp_path: Path, pg_url: URL, pg_engine_of: Engine) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"long": {"module": "record", "period": 0.5,
                                                   "sync": True, "timeout": 2,
                                                   "arguments": [0.5]}},
                       lease_grace=1)
    with ExitStack() as stack:
        masters = start_fleet(stack, cfg, tmp_path, ["a", "b"])

        def in_a_run() -> MasterProcess | None:
            for master in masters:
                if open_row(pg_engine_of, master, "long") is not None:
                    return master
            return None

        wait_for(lambda: len(runs_of(pg_engine_of, script="long")) >= 3, 30, "three runs")
        holder = wait_for(in_a_run, 30, "a run in progress with its row written")
        holder.signal(signal.SIGKILL)
        other = next(m for m in masters if m is not holder)
        before = len(other.events("start", "long"))
        other.wait_events(before + 3, "start", "long", timeout=60)
        wait_for(lambda: all(r.outcome != RUNNING for r in runs_of(pg_engine_of, holder)), 30,
                 "the killed master's run closed")
        assert other.stop() == 0
    rows = [r for r in runs_of(pg_engine_of, script="long") if r.outcome != "skipped"]
    generations = sorted(r.generation for r in rows if r.generation is not None)
    assert generations == list(range(1, len(generations) + 1)), generations
    assert len(generations) == len(rows), "every run under a lease generation"
    lost = [r for r in rows if r.outcome == LOST]
    assert [r.master_pid for r in lost] == [holder.proc.pid], lost
    assert all(r.outcome == OK for r in rows if r not in lost), rows


def test_restart_after_kill_9_closes_the_previous_masters_run_at_once(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"long": {"module": "record", "period": 1, "timeout": 120,
                                           "arguments": [60]}}, heartbeat_interval=600)
    engine = engine_from_url(URL.create("sqlite", database=str(
        tmp_path / "state" / "panda_daemon.sqlite")))
    try:
        with running_master(cfg, tmp_path, server="s1") as first:
            first.wait_log("master started")  # the database file and its tables exist
            wait_for(lambda: open_row(engine, first, "long"), 20, "a running row")
            first.signal(signal.SIGKILL)
            first.proc.wait(10)
        with running_master(cfg, tmp_path, server="s1") as second:
            second.wait_log("closed 1 open run(s) as lost", timeout=20)
            (row,) = runs_of(engine, first)
            assert row.outcome == LOST and row.error is not None
            assert "new master of s1 started" in row.error
            assert second.stop() == 0
    finally:
        engine.dispose()


def test_unlock_closes_the_run_of_a_dead_holder(tmp_path: Path, pg_url: URL,
                                                pg_engine_of: Engine) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"long": {"module": "record", "period": 1,
                                                   "sync": True, "timeout": 600,
                                                   "arguments": [300]}},
                       heartbeat_interval=600)
    with running_master(cfg, tmp_path, server="a") as holder:
        wait_for(lambda: open_row(pg_engine_of, holder, "long"), 20, "a running row")
        holder.signal(signal.SIGKILL)
        holder.proc.wait(10)
    result = cli(tmp_path, cfg, "unlock", "long")
    assert result.returncode == 0, result.stderr
    assert "1 open run(s) of it marked lost" in result.stdout
    (row,) = runs_of(pg_engine_of, holder)
    assert row.outcome == LOST and row.error is not None and "unlock" in row.error


def test_stop_during_an_outage_then_start_loses_no_history(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster, pg_engine_of: Engine) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"quick": {"module": "record", "period": 0.2}},
                       heartbeat_interval=1)
    dbname = str(pg_url.database)
    spool = tmp_path / "state" / "history-spool-solo.jsonl"
    with running_master(cfg, tmp_path, server="solo") as first:
        first.wait_events(3, "end", "quick")
        cut(pg_cluster, dbname)
        first.wait_log("database unavailable", timeout=20)
        during = len(first.events("end", "quick"))
        first.wait_events(during + 10, "end", "quick", timeout=30)
        assert first.stop() == 0
        assert "not written at stop" in first.log() and str(spool) in first.log()
    assert spool.exists()
    ran = {row["run"] for row in first.events("start", "quick")}
    restore(pg_cluster, dbname)
    with running_master(cfg, tmp_path, server="solo") as second:
        second.wait_log("history kept at the last stop is written", timeout=30)
        assert not spool.exists()
        assert second.stop() == 0
    rows = runs_of(pg_engine_of, first)
    assert [r.run_id for r in rows] == sorted(r.run_id for r in rows)
    assert len({r.run_id for r in rows}) == len(rows), "a run written twice"
    assert ran <= {r.run_id for r in rows}, f"runs without a row: {ran - {r.run_id for r in rows}}"
    assert all(r.outcome == OK for r in rows), [(r.run_id, r.outcome) for r in rows
                                                if r.outcome != OK]


def test_kill_9_during_an_outage_leaves_every_run_one_row(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster, pg_engine_of: Engine) -> None:
    """Starts and ends queued in memory (the database is cut) survive a kill -9 of the
    master: the journal keeps them, the next master replays them: each run is written as
    its master saw it end, the one still running at the kill is closed as lost."""
    cfg = fleet_config(tmp_path, pg_url, {"quick": {"module": "record", "period": 0.2}},
                       heartbeat_interval=1)
    dbname = str(pg_url.database)
    journal = tmp_path / "state" / "history-journal-solo.jsonl"
    with running_master(cfg, tmp_path, server="solo") as first:
        first.wait_events(3, "end", "quick")
        cut(pg_cluster, dbname)
        first.wait_log("database unavailable", timeout=20)
        during = len(first.events("start", "quick"))
        first.wait_events(during + 5, "start", "quick", timeout=30)
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
    started = [row["run"] for row in first.events("start", "quick")]
    in_outage = set(started[during:])
    told = {run["run"]: run["outcome"] for run in first.runs("quick")}  # before the next log
    assert journal.exists()
    restore(pg_cluster, dbname)

    def closed() -> list[RunRow] | None:
        rows = runs_of(pg_engine_of, first)
        done = {r.run_id for r in rows if r.outcome != RUNNING}
        return rows if done >= set(started) else None

    with running_master(cfg, tmp_path, server="solo") as second:
        rows = wait_for(closed, 30, "a closed row for every run of the killed master")
        assert "run start(s) kept in" in second.log()
        assert second.stop() == 0
    assert not journal.exists() or journal.stat().st_size == 0, "written, yet kept"
    rows = runs_of(pg_engine_of, first)
    assert len({r.run_id for r in rows}) == len(rows), "a run written twice"
    assert not [r.run_id for r in rows if r.outcome == RUNNING]
    outcome = {r.run_id: r.outcome for r in rows}
    assert {run: outcome[run] for run in in_outage} == {
        run: told.get(run, LOST) for run in in_outage}
    assert OK in {outcome[run] for run in in_outage}, "no run ended in the outage"

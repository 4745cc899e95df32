"""Pruning the history by age and by rows per script, in small batches (db/stores/pruning.py),
and the master's schedule of it (daemons/fleet/history/pruner.py), on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.fleet.fleetdb import FleetDb
from pandaserver.daemons.fleet.history.pruner import PruneSchedule
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.pruning import PrunePass, Retention, StepResult, prune_all
from pandaserver.db.stores.runrecords import OK, RUNNING, SKIPPED


@pytest.fixture
def engine(db_engine: Engine) -> Engine:
    upgrade(db_engine)
    return db_engine


def now_of(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return db_now(conn)


def add_runs(engine: Engine, script: str, ages_days: list[float],
             outcome: str = OK, server: str = "srv") -> None:
    """One row per age (days before the database's now), each a second long."""
    now = now_of(engine)
    rows: list[dict[str, Any]] = []
    for age in ages_days:
        started = now - timedelta(days=age)
        rows.append({"script": script, "server": server, "pid": 1, "started_at": started,
                     "ended_at": None if outcome == RUNNING else started + timedelta(seconds=1),
                     "outcome": outcome})
    with engine.begin() as conn:
        conn.execute(insert(daemon_run), rows)


def ages_of(engine: Engine, script: str) -> list[tuple[datetime, str]]:
    r = daemon_run
    with engine.connect() as conn:
        return [(row.started_at, row.outcome) for row in conn.execute(
            select(r.c.started_at, r.c.outcome).where(r.c.script == script)
            .order_by(r.c.started_at.desc(), r.c.id.desc()))]


def count(engine: Engine, script: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(daemon_run)
                                .where(daemon_run.c.script == script)).scalar_one())


def run_pass(engine: Engine, retention: Retention, batch: int) -> tuple[dict[str, int],
                                                                         list[StepResult]]:
    steps: list[StepResult] = []
    deleted = prune_all(engine, retention, batch, between=steps.append)
    return deleted, steps


def test_rows_bound_keeps_the_newest_n_per_script_and_every_running_run(engine: Engine) -> None:
    # "big": 250 finished runs 3 to 253 days old, and one still running among the oldest
    add_runs(engine, "big", [3.0 + i for i in range(250)])
    add_runs(engine, "big", [300.0], outcome=RUNNING)
    add_runs(engine, "small", [3.0 + i for i in range(50)])  # under the bound
    before = ages_of(engine, "big")
    deleted, steps = run_pass(engine, Retention(rows=100), batch=30)
    after = ages_of(engine, "big")
    assert deleted == {"age": 0, "rows": 150}
    assert after[:100] == before[:100], "the newest 100 are kept"
    assert after[100:] == [before[-1]] and after[100][1] == RUNNING, "a running run is kept"
    assert count(engine, "small") == 50
    assert all(step.deleted <= 30 for step in steps), [s.deleted for s in steps]
    assert sum(1 for s in steps if s.deleted) >= 5  # 150 rows, 30 a statement
    assert steps[-1].done


def test_rows_bound_spares_the_last_two_days(engine: Engine) -> None:
    add_runs(engine, "busy", [i / 100 for i in range(150)])  # 1.5 days of runs
    add_runs(engine, "busy", [2.5 + i for i in range(10)])
    deleted, _ = run_pass(engine, Retention(rows=100), batch=1000)
    assert deleted["rows"] == 10 and count(engine, "busy") == 150


def test_age_bound_in_batches_keeps_running_runs(engine: Engine) -> None:
    add_runs(engine, "x", [40.0 + i / 10 for i in range(120)])
    add_runs(engine, "x", [45.0], outcome=RUNNING)
    add_runs(engine, "x", [1.0 + i for i in range(10)])
    add_runs(engine, "y", [31.0], outcome=SKIPPED, server="other")
    deleted, steps = run_pass(engine, Retention(days=30), batch=25)
    assert deleted == {"age": 121, "rows": 0}
    assert all(step.deleted <= 25 for step in steps) and len(steps) >= 5
    outcomes = [outcome for _, outcome in ages_of(engine, "x")]
    assert len(outcomes) == 11 and outcomes.count(RUNNING) == 1
    assert count(engine, "y") == 0


def test_both_bounds_and_the_store_wrapper(engine: Engine) -> None:
    add_runs(engine, "a", [3.0 + i for i in range(150)])  # 3 .. 152 days old
    removed = HistoryStore(engine).prune(100, rows=120, batch=7)
    kept = ages_of(engine, "a")
    # the age bound leaves 3..99 (97 rows): fewer than 120, so the row bound takes nothing
    assert removed == 53 and len(kept) == 97
    add_runs(engine, "b", [3.0 + i for i in range(150)])
    assert HistoryStore(engine).prune(None, rows=100) == 50 and count(engine, "b") == 100


def test_no_bound_deletes_nothing(engine: Engine) -> None:
    add_runs(engine, "a", [400.0])
    assert run_pass(engine, Retention(), batch=10)[0] == {"age": 0, "rows": 0}
    with pytest.raises(ValueError, match="rows must be 0"):
        Retention(rows=-1)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        PrunePass(engine, Retention(days=1), batch=0)


def test_the_master_prunes_one_step_at_a_time_with_pauses(engine: Engine) -> None:
    add_runs(engine, "a", [3.0 + i for i in range(100)])
    settings = DaemonSettings(path="x", history_retention_days=50.0, history_retention_rows=0)
    schedule = PruneSchedule(engine, lambda: settings, batch=10, pause=0.5, interval=3600.0,
                             budget=1000.0)
    assert schedule.due(0.0)
    now, steps = 0.0, 0
    while True:
        result = schedule.op(now)()  # what the house lane runs
        steps += 1
        assert result.deleted <= 10
        schedule.finished(result, None, now + 0.1)
        if result.done:
            break
        assert schedule.next_at == pytest.approx(now + 0.1 + 0.5), "a pause between steps"
        now = schedule.next_at
    assert steps >= 6 and count(engine, "a") == 47  # 3..49 days old
    assert schedule.next_at == pytest.approx(3600.0), "the next pass an interval later"


def test_a_pass_over_its_time_budget_stops_and_the_next_one_goes_on(engine: Engine) -> None:
    add_runs(engine, "a", [3.0 + i for i in range(100)])
    settings = DaemonSettings(path="x", history_retention_days=50.0)
    schedule = PruneSchedule(engine, lambda: settings, batch=10, budget=5.0, interval=60.0)
    result = schedule.op(0.0)()
    suspended = schedule._pass
    schedule.finished(result, None, 6.0)  # past the budget: the pass is suspended
    assert count(engine, "a") == 90 and schedule.next_at == 60.0
    assert not schedule.due(59.0) and schedule.due(60.0)
    step = schedule.op(60.0)
    assert schedule._pass is suspended, "it goes on where it stopped"
    while not (result := step()).done:
        schedule.finished(result, None, schedule.next_at + 0.01)
        step = schedule.op(schedule.next_at)
    schedule.finished(result, None, schedule.next_at)
    assert count(engine, "a") == 47 and schedule._pass is None


def test_each_script_under_the_row_bound_is_one_step_of_its_own(engine: Engine) -> None:
    for name in ("a", "b", "c", "d"):
        add_runs(engine, name, [3.0 + i for i in range(20)])
    _, steps = run_pass(engine, Retention(rows=10), batch=100)
    assert [s.deleted for s in steps] == [10, 10, 10, 10, 0] and steps[-1].done
    _, steps = run_pass(engine, Retention(rows=50), batch=100)  # every script under the bound
    assert [s.deleted for s in steps] == [0, 0, 0, 0, 0] and len(steps) == 5


def test_a_due_prune_never_makes_the_loop_spin_while_the_house_lane_is_busy(
        engine: Engine) -> None:
    """A heartbeat (or a stalled call) holds the house lane while pruning is due: the loop
    sleeps until that call comes back (its completion wakes it), never 1 ms at a time."""
    fleet = FleetDb(engine, "srv", DaemonSettings(path="x"), time.monotonic, datetime.now(UTC))
    release = threading.Event()
    try:
        fleet._submit("house", "slow", lambda: release.wait(20), lambda *_: None, timeout=30)
        now = time.monotonic()
        fleet.next_beat = fleet.keeper.next_sweep = now + 100.0  # nothing else due
        fleet.schema_ok = True
        assert fleet.pruner.due(now) and fleet.lanes["house"].busy
        assert fleet.tick(now) > now + 1.0
        fleet.down_since, fleet.next_probe = now, now + 100.0  # an outage: no pruning
        release.set()
        assert fleet.tick(now) > now + 1.0
    finally:
        release.set()
        fleet.down_since = None
        fleet.close(timeout=5)

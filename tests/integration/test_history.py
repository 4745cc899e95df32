"""Run history and the outage buffer, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError

from pandaserver.commands.database import cmd_history
from pandaserver.config import PandaConfig
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.servertime import db_now, db_now_plus
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.pending import PendingWrites
from pandaserver.db.stores.runrecords import FAILED, LOST, OK, RUNNING, SKIPPED, TIMEOUT, RunEnd, RunRecord


@pytest.fixture
def history(db_engine: Engine) -> HistoryStore:
    return HistoryStore(db_engine)


def test_start_then_end_records_db_times(history: HistoryStore, db_engine: Engine) -> None:
    run_id = history.record_start("sweeper", "srv-a", 321, generation=4)
    (running,) = history.query("sweeper")
    assert running.id == run_id and running.outcome == RUNNING and running.ended_at is None
    assert running.generation == 4 and running.pid == 321
    with db_engine.connect() as conn:
        assert 0 <= (db_now(conn) - running.started_at).total_seconds() < 1
    assert history.record_end(run_id, FAILED, "Traceback ...\nValueError: boom")
    (done,) = history.query("sweeper")
    assert done.outcome == FAILED and done.error is not None and done.error.endswith("boom")
    assert done.duration is not None and done.duration >= 0
    assert not history.record_end(run_id + 1000, OK), "no such run"


def test_record_whole_run_places_it_back_in_time(history: HistoryStore,
                                                 db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        before = db_now(conn)
    history.record(RunRecord("sweeper", "srv-a", 7, TIMEOUT, "killed after 30s", duration=30,
                             ended_ago=5, due_before_start=2))
    with db_engine.connect() as conn:
        after = db_now(conn)
    (run,) = history.query()
    assert run.ended_at is not None and run.started_at is not None and run.due_at is not None
    # ended 5 s before the database's now at the insert: between the two readings, 5 s back
    slack = timedelta(milliseconds=2)  # SQLite keeps milliseconds
    assert before - timedelta(seconds=5) - slack <= run.ended_at
    assert run.ended_at <= after - timedelta(seconds=5) + slack
    assert (run.ended_at - run.started_at).total_seconds() == pytest.approx(30, abs=2e-3)
    assert (run.started_at - run.due_at).total_seconds() == pytest.approx(2, abs=2e-3)
    assert run.duration == pytest.approx(30, abs=2e-3)
    assert run.outcome == TIMEOUT and run.error == "killed after 30s"


def test_skipped_and_unknown_outcomes(history: HistoryStore) -> None:
    history.record(RunRecord("sync-one", "srv-b", None, SKIPPED, "held by srv-a"))
    (run,) = history.query("sync-one")
    assert run.outcome == SKIPPED and run.duration == pytest.approx(0, abs=1e-3)
    with pytest.raises(ValueError, match="outcome must be one of"):
        history.record(RunRecord("x", "srv", 1, "great"))
    with pytest.raises(ValueError, match="outcome must be one of"):
        history.record_end(run.id, RUNNING)


def test_query_newest_first_by_name_and_limit(history: HistoryStore) -> None:
    for ago, name in [(30, "a"), (20, "b"), (10, "a"), (0, "b")]:
        history.record(RunRecord(name, "srv", 1, OK, ended_ago=ago))
    assert [r.script for r in history.query()] == ["b", "a", "b", "a"]
    assert [r.script for r in history.query(limit=2)] == ["b", "a"]
    only_a = history.query("a")
    assert len(only_a) == 2 and only_a[0].started_at > only_a[1].started_at
    with pytest.raises(ValueError):
        history.query(limit=0)


def test_prune_deletes_only_old_runs(history: HistoryStore, db_engine: Engine) -> None:
    keep = history.record(RunRecord("x", "srv", 1, OK))
    old = history.record(RunRecord("x", "srv", 1, OK))
    with db_engine.begin() as conn:  # make one run 40 days old
        conn.execute(update(daemon_run).where(daemon_run.c.id == old)
                     .values(started_at=db_now_plus(-40 * 86400)))
    assert history.prune(30) == 1
    assert [r.id for r in history.query()] == [keep]


def test_mark_lost_closes_only_that_servers_running_runs(history: HistoryStore) -> None:
    mine = history.record_start("x", "srv-a", 1)
    other = history.record_start("x", "srv-b", 2)
    history.record(RunRecord("x", "srv-a", 1, OK))
    assert history.mark_lost("srv-a") == 1
    outcomes = {r.id: r.outcome for r in history.query()}
    assert outcomes[mine] == LOST and outcomes[other] == RUNNING


def test_long_errors_are_clipped_keeping_the_end(history: HistoryStore) -> None:
    history.record(RunRecord("x", "srv", 1, FAILED, "a" * 50000 + "THE END"))
    (run,) = history.query()
    assert run.error is not None and run.error.endswith("THE END") and len(run.error) < 17000
    assert "characters cut" in run.error


# --- PendingWrites ----------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pending_writes_replay_in_order_with_their_real_times(history: HistoryStore) -> None:
    clock = FakeClock()
    pending = PendingWrites(max_items=10, clock=clock)
    started = history.record_start("x", "srv", 1)
    pending.add(RunRecord("first", "srv", 1, OK, duration=2))  # ended 60 s before the flush
    clock.now += 50
    pending.add(RunEnd(started, FAILED, "db was down"))  # ended 10 s before the flush
    clock.now += 10
    result = pending.flush(history)
    assert (result.written, result.remaining, result.dropped, result.error) == (2, 0, 0, None)
    assert not pending
    by_script = {r.script: r for r in history.query()}
    first, ended = by_script["first"], by_script["x"]
    assert ended.outcome == FAILED and ended.error == "db was down"
    assert first.ended_at is not None and ended.ended_at is not None
    # the replay keeps the 50 s between the two ends, by the database clock
    assert (ended.ended_at - first.ended_at).total_seconds() == pytest.approx(50, abs=0.5)
    assert first.duration == pytest.approx(2, abs=1e-3)


def test_pending_writes_drop_oldest_when_full_and_report_once() -> None:
    pending = PendingWrites(max_items=3)
    for i in range(5):
        pending.add(RunRecord(f"s{i}", "srv", 1, OK))
    assert len(pending) == 3 and pending.dropped_total == 2
    assert pending.take_dropped() == 2 and pending.take_dropped() == 0
    with pytest.raises(ValueError):
        PendingWrites(max_items=0)


def test_pending_writes_keep_everything_while_the_db_is_down(
    history: HistoryStore, tmp_path: object
) -> None:
    pending = PendingWrites(max_items=2)
    for i in range(3):
        pending.add(RunRecord(f"s{i}", "srv", 1, OK))
    # a database that refuses connections: nothing is lost from the queue
    down = engine_from_url("postgresql+psycopg2://u:secretpw@127.0.0.1:1/none")
    try:
        failed = pending.flush(HistoryStore(down))
    finally:
        down.dispose()
    assert isinstance(failed.error, OperationalError)
    assert (failed.written, failed.remaining, failed.dropped) == (0, 2, 1)
    result = pending.flush(history)
    assert (result.written, result.remaining, result.dropped) == (2, 0, 0)
    assert sorted(r.script for r in history.query()) == ["s1", "s2"]


# --- CLI -------------------------------------------------------------------------------

def test_cli_history(history: HistoryStore, db_engine: Engine,
                     config_for: Callable[..., PandaConfig],
                     capsys: pytest.CaptureFixture[str]) -> None:
    history.record(RunRecord("sweeper", "srv-a", 11, OK, duration=1.5))
    history.record(RunRecord("other", "srv-b", 12, FAILED, "Traceback\nKeyError: 'x'"))
    cfg = config_for(db_engine.url)
    assert cmd_history(cfg, argparse.Namespace(name="sweeper", limit=50, json=True)) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["script"] == "sweeper" and run["outcome"] == OK
    assert run["duration"] == pytest.approx(1.5, abs=1e-3)
    assert cmd_history(cfg, argparse.Namespace(name=None, limit=50, json=False)) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["ID", "SCRIPT", "SERVER"]
    assert "KeyError: 'x'" in table and "sweeper" in table
    day = run["started_at"][:10]  # as the database dated it
    with freeze_time("1999-12-31 23:59:59"):  # this host's clock says nothing to history
        assert cmd_history(cfg, argparse.Namespace(name="sweeper", limit=50, json=False)) == 0
    started = capsys.readouterr().out.splitlines()[1].split()[4]
    assert started == day != "1999-12-31"  # the database's date (UTC), not this host's


def test_history_works_on_the_masters_autocommit_engine(db_engine: Engine) -> None:
    engine = engine_from_url(db_engine.url, autocommit=True, pre_ping=False)
    try:
        history = HistoryStore(engine)
        run_id = history.record_start("x", "srv", 1)
        assert history.record_end(run_id, OK)
        history.record(RunRecord("y", "srv", 1, SKIPPED))
        assert {(r.script, r.outcome) for r in history.query()} == {("x", OK), ("y", SKIPPED)}
        assert history.prune(1) == 0
    finally:
        engine.dispose()


def test_record_many_writes_a_batch_with_db_times(history: HistoryStore) -> None:
    runs = [RunRecord(script=f"s{i}", server="x", pid=i, outcome="ok", duration=2.0,
                      ended_ago=10.0, due_before_start=0.5 if i % 2 else None)
            for i in range(6)]
    history.record_many(runs)
    history.record_many([])
    rows = sorted(history.query(limit=50), key=lambda r: r.script)
    assert [r.script for r in rows] == [f"s{i}" for i in range(6)]
    for i, row in enumerate(rows):
        assert row.pid == i and row.outcome == "ok"
        assert row.started_at is not None and row.ended_at is not None
        assert abs((row.ended_at - row.started_at).total_seconds() - 2.0) < 0.01
        if i % 2:
            assert row.due_at is not None
            assert abs((row.started_at - row.due_at).total_seconds() - 0.5) < 0.01
        else:
            assert row.due_at is None

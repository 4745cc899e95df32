"""The run counters of /metrics (``daemon_run_count``, db/stores/runcounts.py) on every backend:
kept by the writes that end runs, in their transaction; a run written twice, re-sent or
closed twice counts once; the upgrade to 0007 counts the history already there."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from alembic import command
from sqlalchemy import Engine, insert, select, update

from pandaserver.db.base import schema
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runcounts import COLUMNS, count_ended, read_counts
from pandaserver.db.stores.runrecords import RunRecord, RunStart
from pandaserver.web.metrics import HistoryCounters


def runs(engine: Engine) -> dict[tuple[str, str, str], int]:
    with engine.connect() as conn:
        return {key: values[0] for key, values in read_counts(conn)}


def start(script: str, run_id: int, generation: int | None = None) -> RunStart:
    return RunStart(script, "srv", "m1", 100, run_id, pid=7, generation=generation,
                    started_ago=2.0, due_before_start=0.01)


def end(script: str, run_id: int, outcome: str = "ok",
        generation: int | None = None) -> RunRecord:
    return RunRecord(script, "srv", 7, outcome, generation=generation, duration=1.5,
                     due_before_start=0.01, master_id="m1", master_pid=100, run_id=run_id)


def test_an_end_written_twice_or_re_sent_counts_once(db_engine: Engine) -> None:
    history = HistoryStore(db_engine)
    history.write_many([start("a", 1), start("a", 2)])
    assert runs(db_engine) == {}  # running rows are not counted
    history.write_many([end("a", 1)])
    assert runs(db_engine) == {("a", "srv", "ok"): 1}
    # the spool re-sends the same batch, start and end, twice more
    history.write_many([start("a", 1), end("a", 1)])
    history.write_many([end("a", 1), end("a", 2, "failed")])
    assert runs(db_engine) == {("a", "srv", "ok"): 1, ("a", "srv", "failed"): 1}
    # a whole unkeyed run, an end by id (a tool's), closures as lost: each counts once
    history.record(RunRecord("b", "srv", 1, "ok", duration=0.2))
    run_id = history.record_start("c", "srv", 1)
    assert history.record_end(run_id, "timeout")
    assert history.record_end(run_id, "timeout")  # again: the row is ended already
    history.write_many([start("d", 3)])
    assert history.mark_lost("srv") == 1
    assert history.mark_lost("srv") == 0
    assert runs(db_engine) == {("a", "srv", "ok"): 1, ("a", "srv", "failed"): 1,
                               ("b", "srv", "ok"): 1, ("c", "srv", "timeout"): 1,
                               ("d", "srv", "lost"): 1}
    # the master that was thought lost reports its run: a counter cannot take it back
    history.write_many([end("d", 3)])
    assert runs(db_engine)[("d", "srv", "lost")] == 1
    assert runs(db_engine)[("d", "srv", "ok")] == 1
    with db_engine.connect() as conn:  # nothing is left waiting to be counted
        assert conn.execute(select(daemon_run.c.id).where(daemon_run.c.tally == 1)).all() == []


def test_a_takeover_counts_the_runs_it_closes(db_engine: Engine) -> None:
    history = HistoryStore(db_engine)
    history.write_many([start("s", 1, generation=4)])
    other = RunStart("s", "srv-b", "m2", 200, 1, generation=5)
    assert history.write_many([other]) == 1  # generation 4's run closed as lost
    assert runs(db_engine) == {("s", "srv", "lost"): 1}


def test_durations_and_delays_are_summed_exactly(db_engine: Engine) -> None:
    history = HistoryStore(db_engine)
    history.write_many([end("a", i) for i in range(1, 4)])
    with db_engine.connect() as conn:
        (_, values), = read_counts(conn)
    got = dict(zip(COLUMNS, values, strict=True))
    assert got["runs"] == 3 and got["delays"] == 3
    assert got["duration_us"] == 3 * 1_500_000
    assert got["delay_us"] == 3 * 10_000
    assert got["duration_le_3"] == 3 and got["duration_le_2"] == 0  # 5 s and 1 s buckets


def test_the_upgrade_counts_the_history_it_finds(empty_engine: Engine) -> None:
    with empty_engine.begin() as conn:
        command.upgrade(schema._config(conn), "0006")
    with empty_engine.connect() as conn:
        now = db_now(conn)
    rows: list[dict[str, Any]] = [
        {"script": "old", "server": "srv", "outcome": outcome, "started_at": now - timedelta(
            days=30, seconds=i), "ended_at": now - timedelta(days=30, seconds=i - 2),
         "due_at": None}
        for i, outcome in enumerate(["ok", "ok", "failed", "running"])]
    with empty_engine.begin() as conn:
        conn.execute(insert(daemon_run), rows)
    upgrade(empty_engine)
    assert runs(empty_engine) == {("old", "srv", "ok"): 2, ("old", "srv", "failed"): 1}
    with empty_engine.connect() as conn:
        sums = HistoryCounters().read(conn)
    assert sums["durations"][("old",)][:2] == [3.0, 6.0]
    # the run still open at the upgrade is counted when it ends
    with empty_engine.begin() as conn:
        conn.execute(update(daemon_run).where(daemon_run.c.outcome == "running")
                     .values(outcome="ok", tally=1))
        count_ended(conn)
    assert runs(empty_engine)[("old", "srv", "ok")] == 3


def test_writers_racing_count_each_run_once(db_engine: Engine) -> None:
    """Four masters' writers end their runs at once, each batch re-sent (as the spool does),
    all into the same counter row, each sweep also seeing the others' rows waiting to be
    counted: every run is counted exactly once."""
    import threading

    history = HistoryStore(db_engine)
    errors: list[BaseException] = []

    def writer(master: str) -> None:
        def mine(item: RunStart | RunRecord) -> Any:
            return replace(item, master_id=master)
        try:
            history.write_many([mine(start("r", i)) for i in range(1, 11)])
            for i in range(1, 11):
                for _ in range(3):
                    history.write_many([mine(end("r", i))])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"m{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert runs(db_engine) == {("r", "srv", "ok"): 40}

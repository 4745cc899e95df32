"""The master's history path on a real SQLite file: the writer thread, outages, the spool
file at stop and its replay at the next start."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from historykit import Harness, rows
from sqlalchemy import Engine

from pandaserver.daemons.fleet.history.keeper import RESEND_WINDOW
from pandaserver.daemons.fleet.history.spool import Spool, decode, encode
from pandaserver.daemons.fleet.history.writer import HistoryWriter
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runrecords import LOST, OK, RUNNING, PendingItem, RunRecord, RunStart


def test_start_at_dispatch_then_end_gives_one_row(engine: Engine, tmp_path: Path) -> None:
    h = Harness(engine, tmp_path)
    run = h.run(1)
    h.keeper.start(run)
    h.settle()
    assert [(r.run_id, r.outcome, r.master_pid, r.pid) for r in rows(h.store)] == [
        (1, RUNNING, 4242, 901)]
    h.clock.now += 3
    h.keeper.end(h.ended(run))
    h.settle()
    (row,) = rows(h.store)
    assert row.outcome == OK and row.duration == pytest.approx(0.5, abs=0.01)
    assert h.ups >= 2 and h.keeper.waiting == 0


def test_outage_keeps_rows_then_resume_writes_them_once(engine: Engine, tmp_path: Path) -> None:
    h = Harness(engine, tmp_path)
    h.store.down = True
    first = h.run(1)
    h.keeper.start(first)
    h.settle()  # the write fails: kept, and the master is told
    assert len(h.outages) == 1 and len(h.keeper.pending) == 1
    h.keeper.end(h.ended(first))
    h.keeper.start(h.run(2))
    h.settle(usable=False)  # the master knows of the outage: kept without trying
    assert len(h.keeper.pending) == 3 and len(h.outages) == 1 and rows(h.store) == []
    h.store.down = False
    h.keeper.resume()
    h.settle()
    assert [(r.run_id, r.outcome) for r in rows(h.store)] == [(1, OK), (2, RUNNING)]
    assert h.keeper.waiting == 0


def test_after_a_failover_recent_rows_are_sent_again_and_none_is_doubled(
        engine: Engine, tmp_path: Path) -> None:
    """The promoted standby lacks the last rows written to the old primary (here: run 3's
    end and run 4), has the older ones: the re-send restores the missing ones, with their
    own times, and adds no second row; rows older than the window are not sent again."""
    h = Harness(engine, tmp_path)
    old = h.run(1)
    h.keeper.start(old)
    h.keeper.end(h.ended(old))
    h.settle()
    h.clock.now += RESEND_WINDOW + 1  # run 1 is out of the window
    kept = [h.run(2), h.run(3)]
    for run in kept:
        h.keeper.start(run)
    h.keeper.end(h.ended(kept[0]))
    h.settle()
    h.keeper.end(h.ended(kept[1]))
    h.keeper.start(h.run(4))
    h.settle()
    before = {r.run_id: (r.outcome, r.started_at, r.ended_at) for r in rows(h.store)}
    with engine.begin() as conn:  # what the standby had not replayed when it was promoted
        conn.exec_driver_sql("DELETE FROM daemon_run WHERE run_id IN (1, 4)")
        conn.exec_driver_sql("UPDATE daemon_run SET outcome = 'running', ended_at = NULL"
                             " WHERE run_id = 3")
    h.keeper.resend_recent(True)
    h.settle()
    after = {r.run_id: (r.outcome, r.started_at, r.ended_at) for r in rows(h.store)}
    assert set(after) == {2, 3, 4} and len(rows(h.store)) == 3
    for run_id in (2, 3, 4):  # the same rows, the same times (the test's clock stood still)
        assert after[run_id][0] == before[run_id][0]
        assert abs((after[run_id][1] - before[run_id][1]).total_seconds()) < 1.0
    assert h.keeper.resent == 5  # starts of 2, 3, 4; ends of 2, 3


def test_pending_rows_are_retried_by_tick_without_a_new_outage_ending(
        engine: Engine, tmp_path: Path) -> None:
    """A replay that fails half way is not stranded until the next outage ends."""
    h = Harness(engine, tmp_path)
    h.store.down = True
    h.keeper.start(h.run(1))
    h.settle()
    h.store.down = False
    h.clock.now += 10
    h.keeper.tick(h.clock.now, usable=True)
    h.settle()
    assert [r.run_id for r in rows(h.store)] == [1]


def test_a_refused_row_costs_only_itself(engine: Engine, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(engine, tmp_path)
    for run_id, script in ((1, "x"), (2, "bad"), (3, "y")):
        h.keeper.start(h.run(run_id, script))
    with caplog.at_level(logging.ERROR):
        h.settle()
    assert [r.run_id for r in rows(h.store)] == [1, 3]
    assert "history row of bad run 2 refused" in caplog.text
    assert h.outages == []


def test_an_unexpected_error_keeps_the_rows_for_another_try(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(engine, tmp_path)
    h.store.weird = True
    with caplog.at_level(logging.ERROR):
        h.keeper.start(h.run(1))
        h.settle()
    assert "kept for another try after an unexpected error: KeyError" in caplog.text
    assert len(h.keeper.pending) == 1 and h.outages == [], "kept, and no outage declared"
    h.store.weird = False
    h.clock.now += 10
    h.keeper.tick(h.clock.now, usable=True)
    h.settle()
    assert [r.run_id for r in rows(h.store)] == [1]


def test_stop_during_an_outage_spools_and_the_next_start_writes_each_row_once(
        engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(engine, tmp_path)
    h.keeper.at_start(h.spool, usable=True)
    done = h.run(1)
    h.keeper.start(done)
    h.settle()
    h.store.down = True
    h.clock.now += 1
    h.keeper.end(h.ended(done))
    for run_id in (2, 3):
        h.keeper.start(h.run(run_id))
    h.keeper.end(h.ended(h.run(2)))
    h.settle()
    with caplog.at_level(logging.ERROR):
        h.keeper.close(usable=False, timeout=5)
    assert "history of 3 run(s) (4 write(s)) not written at stop" in caplog.text
    assert str(h.spool.path) in caplog.text
    lines = h.spool.path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["v"] == 1 for line in lines)
    assert [(r.run_id, r.outcome) for r in rows(h.store)] == [(1, RUNNING)]

    for attempt in (1, 2):  # the second start replays it again: still one row per run
        if attempt == 2:
            h.spool.path.write_text("\n".join(lines) + "\n")  # killed before removing it
        nxt = Harness(engine, tmp_path, master_id=f"m{attempt + 1}")
        nxt.keeper.at_start(nxt.spool, usable=True)
        nxt.clock.now += 1
        nxt.keeper.tick(nxt.clock.now, usable=True)  # and the previous master's runs closed
        nxt.settle()
        assert not nxt.spool.path.exists(), "the spool is removed once written"
        assert [(r.master_id, r.run_id, r.outcome) for r in rows(h.store)] == [
            ("m1", 1, OK), ("m1", 2, OK), ("m1", 3, LOST)]
        nxt.keeper.close(usable=True, timeout=5)


def test_stop_with_the_database_up_writes_everything_and_leaves_no_spool(
        engine: Engine, tmp_path: Path) -> None:
    h = Harness(engine, tmp_path)
    h.keeper.at_start(h.spool, usable=True)
    for run_id in range(1, 51):
        run = h.run(run_id)
        h.keeper.start(run)
        h.keeper.end(h.ended(run))
    h.keeper.close(usable=True, timeout=10)
    assert len(rows(h.store)) == 50 and not h.spool.path.exists()


def test_spool_lines_round_trip_and_age_by_the_wall_clock(tmp_path: Path) -> None:
    items: list[PendingItem] = [
        RunStart("s", "srv", "m", 1, 7, pid=3, generation=2, started_ago=1.0,
                 due_before_start=0.5),
        RunRecord("s", "srv", 3, OK, "e", generation=2, duration=2.0, ended_ago=1.0,
                  due_before_start=0.5, master_id="m", master_pid=1, run_id=7)]
    for item in items:
        assert decode(encode(item, 100.0)) == (100.0, item)
    wall = [1000.0]
    spool = Spool(tmp_path / "s.jsonl", wall=lambda: wall[0])
    spool.save([(50.0, items[0]), (55.0, items[1])], now=60.0)  # made 10 s and 5 s ago
    spool.path.write_text(spool.path.read_text() + "{broken\n")
    wall[0] += 300  # five minutes later, after a reboot: monotonic time starts afresh
    loaded = spool.load(now=7.0)
    assert loaded is not None and [made for made, _ in loaded] == [7.0, 7.0]
    start, record = (item for _, item in loaded)
    assert isinstance(start, RunStart) and start.started_ago == pytest.approx(1 + 10 + 300)
    assert isinstance(record, RunRecord) and record.ended_ago == pytest.approx(1 + 5 + 300)
    spool.save([], now=0)
    assert not spool.path.exists() and spool.load(now=0) == []


def test_an_unreadable_spool_is_never_overwritten(engine: Engine, tmp_path: Path) -> None:
    h = Harness(engine, tmp_path)
    h.spool.path.parent.mkdir(parents=True)
    h.spool.path.write_bytes(b"\xff\xfe not utf-8")
    h.keeper.at_start(h.spool, usable=True)
    h.store.down = True
    h.keeper.start(h.run(1))
    h.keeper.close(usable=False, timeout=1)
    assert h.spool.path.read_bytes() == b"\xff\xfe not utf-8"


def test_writer_group_commits_what_is_queued_while_it_writes(engine: Engine) -> None:
    batches: list[int] = []

    class Slow(HistoryStore):
        def write_many(self, items: Any) -> int:
            batches.append(len(items))
            time.sleep(0.2)
            return super().write_many(items)

    writer = HistoryWriter(Slow(engine), time.monotonic)
    for run_id in range(1, 21):
        writer.submit([(time.monotonic(), RunStart("x", "s", "m", 1, run_id))])
    writer.close(30)
    assert sum(batches) == 20 and len(batches) <= 3, batches
    assert not writer.busy or writer.results() == []

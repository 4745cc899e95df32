"""The history journal (``pandaserver/daemons/fleet/history/journal.py``): run starts kept in
a file before they are queued, so that a master killed with kill -9 leaves none without a
row; on a real SQLite file, masters driven in-process (a "kill" is a keeper dropped without ``close``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from harness import wait_for
from historykit import Harness, rows
from sqlalchemy import Engine

from pandaserver.daemons.fleet.history import journal as history_journal
from pandaserver.daemons.fleet.history.journal import Journal
from pandaserver.db.stores.runcounts import read_counts
from pandaserver.db.stores.runrecords import LOST, OK, RUNNING, RunRecord, RunStart


def journal_of(h: Harness, tmp_path: Path) -> Journal:
    return Journal(tmp_path / "state" / "history-journal-srv.jsonl", h.clock)


def until_quiet(h: Harness) -> None:
    """Tick (the database usable) until the replay and the closing of the previous
    master's runs are answered."""
    def quiet() -> bool:
        h.clock.now += 0.5
        h.keeper.tick(h.clock.now, usable=True)
        return not (h.keeper.writer.busy or h.keeper.pending or h.keeper.batch
                    or h.keeper.mark_lost_due)

    wait_for(quiet, 10, "the keeper to write everything")


def test_starts_killed_in_an_outage_are_replayed_then_closed_as_lost(
        engine: Engine, tmp_path: Path) -> None:
    first = Harness(engine, tmp_path)
    journal = journal_of(first, tmp_path)
    first.keeper.at_start(first.spool, usable=True, journal=journal)
    done = first.run(1)
    first.keeper.start(done)
    first.keeper.end(first.ended(done))
    first.settle()
    assert journal.path.stat().st_size == 0, "nothing unwritten: the journal is truncated"
    first.store.down = True
    for run_id in (2, 3):
        first.keeper.start(first.run(run_id))
    first.settle(usable=False)
    assert len(journal.path.read_text().splitlines()) == 2
    # kill -9: no close; the next master starts in the outage, with a run of its own
    first.store.down = False
    nxt = Harness(engine, tmp_path, master_id="m2")
    nxt.keeper.at_start(nxt.spool, usable=False, journal=journal_of(nxt, tmp_path))
    nxt.keeper.start(nxt.run(1))
    nxt.clock.now += 1  # the database is back: the new start's batch is due at once
    until_quiet(nxt)
    assert [(r.master_id, r.run_id, r.outcome) for r in rows(nxt.store)] == [
        ("m1", 1, OK), ("m1", 2, LOST), ("m1", 3, LOST), ("m2", 1, "running")]
    nxt.keeper.close(usable=True, timeout=5)
    assert not journal.path.exists() or journal.path.stat().st_size == 0


def test_a_replayed_start_never_reopens_a_finished_run(engine: Engine, tmp_path: Path) -> None:
    first = Harness(engine, tmp_path)
    journal = journal_of(first, tmp_path)
    first.keeper.at_start(first.spool, usable=True, journal=journal)
    run = first.run(1)
    first.keeper.start(run)
    kept = journal.path.read_bytes()
    first.keeper.end(first.ended(run))
    first.settle()
    journal.path.write_bytes(kept)  # killed after the write, before the truncation
    nxt = Harness(engine, tmp_path, master_id="m2")
    nxt.keeper.at_start(nxt.spool, usable=True, journal=journal_of(nxt, tmp_path))
    until_quiet(nxt)
    assert [(r.master_id, r.run_id, r.outcome) for r in rows(nxt.store)] == [("m1", 1, OK)]
    assert not journal.path.exists() or journal.path.stat().st_size == 0


def test_a_journal_that_keeps_unwritten_runs_is_compacted(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_journal, "COMPACT_BYTES", 2000)
    h = Harness(engine, tmp_path)
    journal = journal_of(h, tmp_path)
    h.keeper.at_start(h.spool, usable=True, journal=journal)
    h.store.down = True
    h.keeper.start(h.run(1))
    h.settle()  # kept for a later try (the loop's tick would retry it: not called here)
    h.store.down = False
    sizes = []
    for run_id in range(2, 40):
        h.keeper.start(h.run(run_id))
        h.settle()
        sizes.append(journal.path.stat().st_size)
    assert max(sizes) <= 2000 + max(len(line) for line in journal.unwritten.values())
    assert list(journal.unwritten) == [("m1", 1, "start")]
    assert b'"run_id":1,' in journal.path.read_bytes()
    nxt = Harness(engine, tmp_path, master_id="m2")  # h killed: run 1 is replayed and closed
    nxt.keeper.at_start(nxt.spool, usable=True, journal=journal_of(nxt, tmp_path))
    until_quiet(nxt)
    assert [(r.run_id, r.outcome) for r in rows(nxt.store)] == [
        (run_id, LOST) for run_id in range(1, 40)]


def test_an_unwritable_journal_is_said_once_and_costs_nothing_else(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    journal = Journal(blocker / "history-journal-srv.jsonl", lambda: 1.0)
    items = []
    for run_id in (1, 2):
        item = RunStart(script="x", server="srv", master_id="m1", master_pid=1, run_id=run_id,
                        pid=2, generation=None, due_before_start=0.0)
        items.append(item)
        with caplog.at_level(logging.ERROR):
            journal.append(1.0, item)
    assert caplog.text.count("cannot be written") == 1 and "kill -9" in caplog.text
    journal.written(items)
    journal.close()


def test_an_end_known_but_not_written_at_a_kill_is_replayed_ok_and_counted_once(
        engine: Engine, tmp_path: Path) -> None:
    """The run ended ``ok`` while its end was still only in the master's memory (the
    database did not answer); kill -9, and the next master writes it ``ok``, with the end
    it had, counted once in daemon_run_count, even when the file is replayed twice."""
    first = Harness(engine, tmp_path)
    journal = journal_of(first, tmp_path)
    first.keeper.at_start(first.spool, usable=True, journal=journal)
    run = first.run(1)
    first.keeper.start(run)
    first.settle()
    first.clock.now += 2
    first.store.down = True  # the end is known; its write does not land
    first.keeper.end(first.ended(run))
    first.settle()
    assert [r.outcome for r in rows(first.store)] == [RUNNING]
    kept = journal.path.read_bytes()
    # kill -9: no close. The next master replays the journal, then closes what is open
    first.store.down = False
    nxt = Harness(engine, tmp_path, master_id="m2")
    nxt.keeper.at_start(nxt.spool, usable=True, journal=journal_of(nxt, tmp_path))
    until_quiet(nxt)
    (row,) = rows(nxt.store)
    assert (row.master_id, row.run_id, row.outcome, row.pid) == ("m1", 1, OK, 901)
    assert row.duration == pytest.approx(0.5, abs=0.05)
    assert not journal.path.exists() or journal.path.stat().st_size == 0
    # killed again after the write, before the truncation: replayed once more, nothing added
    journal.path.write_bytes(kept)
    again = Harness(engine, tmp_path, master_id="m3")
    again.keeper.at_start(again.spool, usable=True, journal=journal_of(again, tmp_path))
    until_quiet(again)
    assert [(r.run_id, r.outcome, r.ended_at) for r in rows(again.store)] == [
        (1, OK, row.ended_at)]
    with engine.connect() as conn:
        assert [(key, values[0]) for key, values in read_counts(conn)] == [
            (("x", "srv", OK), 1)]


def test_a_written_start_leaves_its_runs_end_kept_until_the_end_is_written(
        tmp_path: Path) -> None:
    """The start's confirmation may come back after the end was journaled: the end's line
    stays until the end itself is written (then the file is truncated)."""
    journal = Journal(tmp_path / "history-journal-srv.jsonl", lambda: 1.0)
    start = RunStart(script="x", server="srv", master_id="m1", master_pid=1, run_id=1)
    end = RunRecord("x", "srv", 7, OK, duration=0.5, master_id="m1", master_pid=1, run_id=1)
    journal.append(1.0, start)
    journal.append(1.0, end)
    journal.written([start])
    assert list(journal.unwritten) == [("m1", 1, "end")]
    assert journal.path.stat().st_size > 0
    journal.written([end])
    assert journal.unwritten == {} and journal.path.stat().st_size == 0

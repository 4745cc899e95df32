"""A sync lease's grant writes the ``running`` row of the run it was asked for
(``pandaserver/db/stores/grantrun.py``) in its own statement (PostgreSQL) or transaction
(SQLite, MariaDB), so a holder killed at any moment after its grant leaves no generation
without a history row; the master's own writes complete that row, counted once."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from harness import wait_for
from sqlalchemy import Engine

from pandaserver.db.base.servertime import db_now
from pandaserver.db.stores import grantrun
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.leasegrant import LeaseResult
from pandaserver.db.stores.leases import Holder, LeaseStore
from pandaserver.db.stores.runcounts import read_counts
from pandaserver.db.stores.runrecords import FAILED, LOST, OK, RUNNING, RunRecord, RunRow, RunStart


def rows(history: HistoryStore) -> list[RunRow]:
    return sorted(history.query(limit=100), key=lambda r: r.generation or 0)


def counted(engine: Engine) -> dict[tuple[str, str, str], int]:
    with engine.connect() as conn:
        return {key: values[0] for key, values in read_counts(conn)}


def test_a_grant_writes_its_runs_row_and_a_refusal_writes_none(db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    got = leases.try_acquire("s", "srv-a", 11, period=60, ttl=60, token="ma", run_id=3)
    assert got.granted and got.run_row
    refused = leases.try_acquire("s", "srv-b", 12, period=60, ttl=60, token="mb", run_id=1)
    assert not refused.granted and not refused.run_row
    lease = leases.get("s")
    assert lease is not None and lease.contended == 1  # the refusal is still counted
    (row,) = rows(history)
    assert (row.script, row.server, row.master_id, row.master_pid, row.run_id,
            row.generation, row.outcome, row.ended_at, row.pid) == (
        "s", "srv-a", "ma", 11, 3, got.generation, RUNNING, None, None)
    # a grant asked without a run (a tool, run-once, a previous release): no row, as before
    plain = leases.try_acquire("t", "srv-a", 11, period=60, ttl=60, token="ma")
    assert plain.granted and not plain.run_row
    assert len(rows(history)) == 1


def test_a_cron_firings_grant_writes_its_runs_row(db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)

    def now() -> datetime:
        with db_engine.connect() as conn:
            return db_now(conn)

    def ask(firing: datetime) -> LeaseResult:
        return leases.try_acquire("nightly", "srv-a", 11, period=60, ttl=60, firing=firing,
                                  next_firing=firing + timedelta(seconds=60), token="ma",
                                  run_id=5)

    first = ask(now() - timedelta(seconds=30))  # makes the row: a firing before it is not run
    assert not first.granted and first.firing is not None and rows(history) == []
    firing = first.firing + timedelta(milliseconds=5)
    granted = wait_for(lambda: (got := ask(firing)).granted and got, 10, "the firing's grant")
    assert granted.run_row
    (row,) = rows(history)
    assert (row.run_id, row.generation, row.outcome) == (5, granted.generation, RUNNING)


def test_the_masters_start_and_end_complete_that_row_counted_once(db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    got = leases.try_acquire("s", "srv-a", 11, period=60, ttl=60, token="ma", run_id=1)
    assert got.generation is not None
    start = RunStart("s", "srv-a", "ma", 11, 1, pid=501, generation=got.generation,
                     started_ago=0.0, due_before_start=0.25)
    history.write_many([start])
    (running,) = rows(history)
    assert (running.outcome, running.pid) == (RUNNING, 501) and running.due_at is not None
    end = RunRecord("s", "srv-a", 501, OK, generation=got.generation, duration=0.5,
                    due_before_start=0.25, master_id="ma", master_pid=11, run_id=1)
    history.write_many([end])
    history.write_many([start, end])  # replayed (a journal, a failover's re-send)
    (done,) = rows(history)
    assert (done.id, done.outcome, done.pid) == (running.id, OK, 501)
    assert counted(db_engine) == {("s", "srv-a", OK): 1}


def test_a_holder_killed_right_after_its_grant_leaves_its_generation_a_lost_row(
        db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    # srv-a is granted generation g for its run 1, and killed before it queued anything
    first = leases.try_acquire("k", "srv-a", 11, period=0.2, ttl=0.3, token="ma", run_id=1)
    assert first.granted
    # srv-b takes the script over once that lease expired, and writes its run's start
    taken = wait_for(lambda: (got := leases.try_acquire(
        "k", "srv-b", 12, period=0.2, ttl=60, token="mb", run_id=1)).granted and got,
        10, "the takeover after the lease expired")
    history.write_many([RunStart("k", "srv-b", "mb", 12, 1, pid=600,
                                 generation=taken.generation)])
    found = rows(history)
    assert [r.generation for r in found] == [first.generation, taken.generation]
    lost, running = found
    assert (lost.master_id, lost.outcome, running.outcome) == ("ma", LOST, RUNNING)
    assert lost.error is not None and "taken over" in lost.error
    assert counted(db_engine) == {("k", "srv-a", LOST): 1}


# not PostgreSQL: there grant and row are one statement, which cannot part
@pytest.mark.parametrize("db_url", ["sqlite", "mysql"], indirect=True)
def test_a_grant_whose_run_row_fails_is_not_granted(
        db_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the row is a second statement (SQLite, MariaDB), grant and row commit
    together or not at all."""
    leases = LeaseStore(db_engine)

    def broken(*args: object) -> None:
        raise RuntimeError("the run row could not be written")

    monkeypatch.setattr(grantrun, "insert_row", broken)
    with pytest.raises(RuntimeError):
        leases.try_acquire("s", "srv-a", 11, period=60, ttl=60, token="ma", run_id=1)
    assert leases.get("s") is None  # the grant was rolled back with it
    monkeypatch.undo()
    got = leases.try_acquire("s", "srv-a", 11, period=60, ttl=60, token="ma", run_id=1)
    assert got.granted and got.generation == 1 and got.run_row


def test_the_grant_releasing_a_finished_run_writes_how_it_ended(db_engine: Engine) -> None:
    """The holder's next grant folds its finished generation's release and that run's end
    (``Ended``): a kill before the history batch leaves the run as it ended, not lost."""
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    first = leases.try_acquire("f", "srv-a", 11, period=0.2, ttl=60, token="ma", run_id=1)
    assert first.generation is not None
    history.write_many([RunStart("f", "srv-a", "ma", 11, 1, pid=501,
                                 generation=first.generation)])
    ended = grantrun.Ended(1, FAILED, "boom", ended_ago=0.05)

    def fold() -> LeaseResult:
        return leases.try_acquire("f", "srv-a", 11, period=0.2, ttl=60, token="ma", run_id=2,
                                  finished=first.generation, ended=ended)

    refused = fold()  # not due yet: refused, and the run's row is left to the writer
    assert not refused.granted
    assert [(r.run_id, r.outcome) for r in rows(history)] == [(1, RUNNING)]
    second = wait_for(lambda: (got := fold()).granted and got, 10, "the next period's grant")
    assert second.generation == first.generation + 1
    done, running = rows(history)
    assert (done.run_id, done.outcome, done.error, done.pid) == (1, FAILED, "boom", 501)
    assert done.ended_at is not None and running.outcome == RUNNING
    # the master's own end of run 1, written later (and again): nothing changes, counted once
    end = RunRecord("f", "srv-a", 501, FAILED, "boom", generation=first.generation,
                    duration=0.1, master_id="ma", master_pid=11, run_id=1)
    history.write_many([end])
    history.write_many([end])
    (again, _) = rows(history)
    assert (again.outcome, again.ended_at) == (FAILED, done.ended_at)
    assert counted(db_engine) == {("f", "srv-a", FAILED): 1}


def test_a_release_at_once_writes_how_the_run_ended(db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    holder = Holder("srv-a", 11, "ma")
    got = leases.try_acquire("r", "srv-a", 11, period=60, ttl=60, token="ma", run_id=1)
    assert got.generation is not None
    ended = grantrun.Ended(1, OK, None, ended_ago=0.05)
    assert leases.release("r", got.generation, holder, ended)
    (row,) = rows(history)
    assert row.outcome == OK and row.ended_at is not None
    lease = leases.get("r")
    assert lease is not None and not lease.held
    # the lease is no longer this holder's: the run's end is still its own account
    again = leases.try_acquire("r", "srv-b", 12, period=0.0, ttl=60, token="mb", run_id=1)
    assert again.granted
    history.write_many([RunStart("r", "srv-b", "mb", 12, 1, pid=9, generation=again.generation)])
    late = grantrun.Ended(1, OK, None, ended_ago=0.0)
    assert not leases.release("r", got.generation, holder, late)
    assert [(r.master_id, r.outcome) for r in rows(history)] == [("ma", OK), ("mb", RUNNING)]
    history.write_many([RunRecord("r", "srv-a", 5, OK, generation=got.generation,
                                  duration=0.1, master_id="ma", master_pid=11, run_id=1)])
    assert counted(db_engine) == {("r", "srv-a", OK): 1}


def test_a_grant_not_used_has_its_row_removed_and_only_that_one(db_engine: Engine) -> None:
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    for name in ("unused", "started"):
        assert leases.try_acquire(name, "srv-a", 11, period=60, ttl=60, token="ma",
                                  run_id=1 if name == "unused" else 2).run_row
    history.write_many([RunStart("started", "srv-a", "ma", 11, 2, pid=501, generation=1)])
    assert history.forget_unrun("ma", 1) == 1
    assert history.forget_unrun("ma", 2) == 0  # it started: never removed
    assert [(r.script, r.run_id) for r in rows(history)] == [("started", 2)]


def test_a_start_written_after_the_release_that_ended_the_row_still_completes_it(
        db_engine: Engine) -> None:
    """A short run released at once: the release writes its end before the history batch
    holding its start; the start still brings the worker pid and the due time, never the
    outcome back."""
    leases, history = LeaseStore(db_engine), HistoryStore(db_engine)
    got = leases.try_acquire("q", "srv-a", 11, period=60, ttl=60, token="ma", run_id=1)
    assert got.generation is not None
    assert leases.release("q", got.generation, Holder("srv-a", 11, "ma"),
                          grantrun.Ended(1, OK, None, ended_ago=0.0))
    history.write_many([
        RunStart("q", "srv-a", "ma", 11, 1, pid=501, generation=got.generation,
                 started_ago=0.2, due_before_start=0.25),
        RunRecord("q", "srv-a", 501, OK, generation=got.generation, duration=0.1,
                  due_before_start=0.25, master_id="ma", master_pid=11, run_id=1)])
    (row,) = rows(history)
    assert (row.outcome, row.pid) == (OK, 501) and row.due_at is not None
    assert counted(db_engine) == {("q", "srv-a", OK): 1}

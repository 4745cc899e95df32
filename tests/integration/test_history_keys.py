"""Keyed run rows (one row per dispatched run, whatever the order or number of writes) and
closing the runs of dead masters as lost, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, update

from pandaserver.db.base.servertime import db_now_plus
from pandaserver.db.base.tables import daemon_run, daemon_server
from pandaserver.db.stores.heartbeat import HeartbeatStore
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.pending import PendingWrites
from pandaserver.db.stores.runrecords import FAILED, LOST, OK, RUNNING, SKIPPED, RunRecord, RunRow, RunStart


@pytest.fixture
def history(db_engine: Engine) -> HistoryStore:
    return HistoryStore(db_engine)


def start(run_id: int, script: str = "x", master: str = "m1", server: str = "srv",
          generation: int | None = None, pid: int = 11) -> RunStart:
    return RunStart(script, server, master, pid, run_id, pid=500 + run_id, generation=generation,
                    started_ago=2.0, due_before_start=0.25)


def end(run_id: int, outcome: str = OK, script: str = "x", master: str = "m1",
        server: str = "srv", generation: int | None = None, pid: int = 11,
        error: str | None = None) -> RunRecord:
    return RunRecord(script, server, 500 + run_id, outcome, error, generation=generation,
                     duration=1.5, ended_ago=0.25, due_before_start=0.25, master_id=master,
                     master_pid=pid, run_id=run_id)


def rows(history: HistoryStore) -> list[RunRow]:
    return sorted(history.query(limit=500), key=lambda r: (r.master_id or "", r.run_id or 0))


def test_start_then_end_is_one_row_with_the_ends_times(history: HistoryStore) -> None:
    history.write_many([start(1, generation=7)])
    (running,) = rows(history)
    assert (running.outcome, running.ended_at, running.run_id, running.master_id,
            running.master_pid, running.pid, running.generation) == (
        RUNNING, None, 1, "m1", 11, 501, 7)
    assert running.due_at is not None
    assert (running.started_at - running.due_at).total_seconds() == pytest.approx(0.25, abs=0.01)
    history.write_many([end(1, FAILED, generation=7, error="boom")])
    (done,) = rows(history)
    assert done.id == running.id and done.outcome == FAILED and done.error == "boom"
    assert done.duration == pytest.approx(1.5, abs=0.01)


@pytest.mark.parametrize("order", list(itertools.permutations(["start", "end", "end2",
                                                               "start2"])))
def test_any_order_and_any_repetition_gives_one_final_row(history: HistoryStore,
                                                          order: tuple[str, ...]) -> None:
    writes = {"start": start(1), "start2": start(1).aged(3), "end": end(1),
              "end2": end(1).aged(5)}
    for name in order:
        history.write_many([writes[name]])
    (row,) = rows(history)
    assert row.outcome == OK and row.ended_at is not None


def test_a_batch_holding_start_and_end_of_short_runs(history: HistoryStore) -> None:
    batch = [item for i in range(1, 6) for item in (start(i), end(i))]
    history.write_many(batch)
    history.write_many(batch)  # replayed whole: nothing added
    assert [(r.run_id, r.outcome) for r in rows(history)] == [(i, OK) for i in range(1, 6)]


def test_the_masters_account_overwrites_lost_but_never_a_final_outcome(
        history: HistoryStore) -> None:
    history.write_many([start(1), start(2)])
    assert history.mark_lost("srv") == 2
    history.write_many([end(1, OK)])  # the master was alive after all: its account wins
    history.write_many([end(2, OK)])
    history.write_many([end(2, FAILED)])  # a different account of a finished run: ignored
    assert [(r.run_id, r.outcome) for r in rows(history)] == [(1, OK), (2, OK)]


def test_same_run_number_of_two_masters_are_two_rows(history: HistoryStore) -> None:
    history.write_many([start(1, master="m1"), start(1, master="m2", pid=11)])
    history.write_many([end(1, master="m2"), RunRecord("x", "srv", 1, SKIPPED, master_id="m3",
                                                       master_pid=3, run_id=1)])
    assert [(r.master_id, r.outcome) for r in rows(history)] == [
        ("m1", RUNNING), ("m2", OK), ("m3", SKIPPED)]


def test_a_new_lease_generation_closes_older_open_runs_of_that_script(
        history: HistoryStore) -> None:
    history.write_many([start(1, "sync_a", "m1", generation=4),
                        start(2, "sync_b", "m1", generation=4),
                        start(3, "sync_a", "m1", generation=None)])
    closed = history.write_many([start(1, "sync_a", "m2", server="srv2", generation=5)])
    assert closed == 1
    by = {(r.master_id, r.run_id): r for r in rows(history)}
    old = by[("m1", 1)]
    assert old.outcome == LOST and old.error is not None and "generation 5 went to srv2" in old.error
    assert by[("m1", 2)].outcome == RUNNING, "another script"
    assert by[("m1", 3)].outcome == RUNNING, "not under a lease"
    assert by[("m2", 1)].outcome == RUNNING, "the new holder"
    history.write_many([start(4, "sync_a", "m1", generation=5)])  # same generation: not older
    assert by[("m2", 1)].outcome == RUNNING


def test_mark_lost_at_a_masters_start_spares_its_own_runs(history: HistoryStore) -> None:
    history.write_many([start(1, master="old"), start(1, master="new"),
                        start(1, master="elsewhere", server="srv2")])
    assert history.mark_lost("srv", except_master="new", why="gone at restart") == 1
    by = {r.master_id: r for r in rows(history)}
    assert by["old"].outcome == LOST and by["old"].error == "gone at restart"
    assert by["new"].outcome == RUNNING and by["elsewhere"].outcome == RUNNING


def _age(engine: Engine, seconds: float, master: str | None = None,
         server: str | None = None) -> None:
    """Move runs' starts (of one master) or a server's last heartbeat into the past."""
    with engine.begin() as conn:
        if master is not None:
            conn.execute(update(daemon_run).where(daemon_run.c.master_id == master)
                         .values(started_at=db_now_plus(-seconds)))
        if server is not None:
            conn.execute(update(daemon_server).where(daemon_server.c.server == server)
                         .values(last_seen=db_now_plus(-seconds)))


def test_sweep_closes_runs_whose_master_stopped_beating(history: HistoryStore,
                                                        db_engine: Engine) -> None:
    beats = HeartbeatStore(db_engine)
    born = datetime(2024, 1, 1, tzinfo=UTC)
    beats.beat("alive", 11, "1", born, "h")
    beats.beat("dead", 22, "1", born, "h")
    beats.beat("replaced", 99, "1", born, "h")  # a new master (pid 99) of that server beats
    history.write_many([
        start(1, master="a", server="alive", pid=11), start(1, master="d", server="dead", pid=22),
        start(1, master="r", server="replaced", pid=33), start(1, master="f", server="forgot"),
        start(1, master="young", server="dead", pid=22), start(1, master="me", server="mine")])
    for master in ("a", "d", "r", "f", "me"):
        _age(db_engine, 100, master=master)
    _age(db_engine, 100, server="dead")
    assert history.close_abandoned(30, except_master="me") == 3
    by = {r.master_id: r.outcome for r in rows(history)}
    assert by == {"a": RUNNING, "d": LOST, "r": LOST, "f": LOST, "young": RUNNING,
                  "me": RUNNING}
    (dead,) = [r for r in rows(history) if r.master_id == "d"]
    assert dead.error is not None and "no heartbeat for 30 s" in dead.error
    assert history.close_abandoned(30, except_master="me") == 0


def test_the_look_before_the_sweep_finds_exactly_what_the_sweep_closes(
        history: HistoryStore, db_engine: Engine) -> None:
    """The heartbeat's cheap look (``abandoned_runs``) decides whether the sweep runs at
    all: it must see every run the sweep would close, and nothing else."""
    beats = HeartbeatStore(db_engine)
    born = datetime(2024, 1, 1, tzinfo=UTC)
    beats.beat("alive", 11, "1", born, "h")
    beats.beat("dead", 22, "1", born, "h")
    beats.beat("replaced", 99, "1", born, "h")
    history.write_many([start(1, master="a", server="alive", pid=11),
                        start(1, master="young", server="dead", pid=22),
                        start(1, master="me", server="mine")])
    for master in ("a", "me"):
        _age(db_engine, 100, master=master)
    _age(db_engine, 100, server="dead")

    def looks() -> tuple[bool, bool | None]:
        """The look alone, and as the heartbeat's statement makes it (on PostgreSQL, one
        statement with the beat)."""
        return (beats.abandoned_runs(30, except_master="me"),
                beats.beat("mine", 5, "1", born, "h", abandoned_after=30, except_master="me"))

    assert looks() == (False, False), "saw a run the sweep keeps"
    assert beats.abandoned_runs(30), "missed a run of a master that never beat"
    for master, server, pid in (("d", "dead", 22), ("r", "replaced", 33), ("f", "forgot", 1)):
        history.write_many([start(1, master=master, server=server, pid=pid)])
        _age(db_engine, 100, master=master)
        assert looks() == (True, True), f"missed {master}'s open run"
        assert history.close_abandoned(30, except_master="me") == 1
        assert looks() == (False, False)
    assert beats.beat("mine", 6, "1", born, "h") is None  # no look asked
    assert {r.server: r.pid for r in beats.list_servers()}["mine"] == 6


def test_unlock_closes_the_open_runs_of_that_lease(history: HistoryStore) -> None:
    history.write_many([start(2, "sync_a", generation=9)])
    history.write_many([start(1, "sync_a", generation=3), start(3, "sync_b", generation=3)])
    assert history.close_lease_runs("sync_a", 3, "force-released") == 1
    assert [r.outcome for r in rows(history)] == [LOST, RUNNING, RUNNING]


def test_pending_writes_replay_starts_and_ends_once(history: HistoryStore) -> None:
    pending = PendingWrites(max_items=100)
    for i in range(1, 4):
        pending.add(start(i))
        pending.add(end(i))
    pending.add(start(4))
    result = pending.flush(history, chunk=3)
    assert (result.written, result.remaining, result.error) == (7, 0, None)
    for i in range(1, 5):  # the same writes again (an answer lost after the commit)
        pending.add(start(i))
    pending.flush(history)
    assert [(r.run_id, r.outcome) for r in rows(history)] == [
        (1, OK), (2, OK), (3, OK), (4, RUNNING)]


def test_the_key_is_unique_in_the_schema(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        names = {ix.name: ix.unique for ix in daemon_run.indexes}
        assert names["uq_daemon_run_master_id_run_id"]
        assert conn.execute(select(daemon_run.c.id)).all() == []

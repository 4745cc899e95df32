"""Run history (``daemon_run``): one row per run, or per attempt skipped for a lease.

Times come from the database clock. The master writes a run in two steps, both keyed by
``(master_id, run_id)`` so that any write may be replayed without adding a row: a
``RunStart`` when it dispatches the run (a ``running`` row) and a ``RunRecord`` with the
run's outcome when it ends (which completes that row, or inserts the whole row if the
start never got written); ``write_many`` applies a batch of both. A run left ``running``
by a master that died is closed as ``lost`` by whoever learns it first: the next master
of that server (``mark_lost``), a master taking over its lease (in ``write_many``),
``panda-daemon unlock`` (``close_lease_runs``) or any master sweeping for masters whose
heartbeats stopped (``close_abandoned``). Unkeyed helpers (``record_start``/``record_end``,
``record``, ``record_many``) remain for tools and tests.

Writes that failed while the database was unreachable wait in ``PendingWrites``
(``pending.py``); pruning by age and by rows, in small batches, is in ``pruning.py``; the
records and rows themselves (``RunStart``, ``RunRecord``, ``RunEnd``, ``RunRow``) in ``runrecords.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from pandaserver.db.base.servertime import db_now_expr, db_now_plus
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores import pruning, runcounts, runwrites
from pandaserver.db.stores.leases import LeaseRow
from pandaserver.db.stores.runrecords import END_OUTCOMES, LOST, RUNNING, RunEnd, RunRow

# Named here as well: daemons/fleet/history/keeper.py reads them as ``history.RunStart``...
from pandaserver.db.stores.runrecords import PendingItem as PendingItem
from pandaserver.db.stores.runrecords import RunRecord as RunRecord
from pandaserver.db.stores.runrecords import RunStart as RunStart
from pandaserver.db.stores.runrecords import clip_error as _clip


def with_finished(engine: Engine, leases: list[LeaseRow]) -> list[LeaseRow]:
    """``leases`` with ``finished`` set on the held ones whose run has ended
    (``HistoryStore.ended_grants``)."""
    held = [(lease.name, lease.generation, lease.owner_server, lease.owner_pid)
            for lease in leases if lease.held]
    done = HistoryStore(engine).ended_grants(held) if held else set()
    return [replace(lease, finished=lease.name in done) for lease in leases]


def _transaction_level(engine: Engine) -> str:
    """Read committed where the database has it (MySQL's default, repeatable read, takes
    gap locks that make concurrent writers deadlock); SQLite has one writer anyway."""
    return "SERIALIZABLE" if engine.dialect.name == "sqlite" else "READ COMMITTED"
T = TypeVar("T")
ENDED_LOOK = 5  # newest rows of a script where a held lease's run is looked for


def _check_outcome(outcome: str, allowed: tuple[str, ...]) -> None:
    if outcome not in allowed:
        raise ValueError(f"outcome must be one of {', '.join(allowed)}, got: {outcome!r}")


def _check_seconds(what: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got: {value!r}")




def _end_stmt(run_id: int, outcome: str, error: str | None, ended_ago: float) -> Any:
    """End a run by id; it is counted (``tally``) only if this ends it (a re-sent end
    of an ended run changes no counter). ``tally`` before ``outcome``: MySQL assigns in
    order, and the test must see the old outcome."""
    r = daemon_run
    ends = or_(r.c.outcome == RUNNING, r.c.outcome == LOST)
    return (update(r)
            .where(r.c.id == run_id)
            .ordered_values((r.c.tally, case((ends, 1), else_=r.c.tally)),
                            (r.c.ended_at, db_now_plus(-ended_ago)),
                            (r.c.error, _clip(error)), (r.c.outcome, outcome)))


def _start_params(item: RunStart) -> dict[str, Any]:
    _check_seconds("started_ago", item.started_ago)
    return _row_params(item, item.started_ago, None, RUNNING, None)


def _final_params(run: RunRecord) -> dict[str, Any]:
    _check_outcome(run.outcome, END_OUTCOMES)
    _check_seconds("duration", run.duration)
    _check_seconds("ended_ago", run.ended_ago)
    return _row_params(run, run.ended_ago + run.duration, run.ended_ago, run.outcome,
                       _clip(run.error))


def _row_params(run: RunStart | RunRecord, started_ago: float, ended_ago: float | None,
                outcome: str, error: str | None) -> dict[str, Any]:
    """The row of a run's start or end (both carry the same identity and due time)."""
    due = run.due_before_start
    if due is not None:
        _check_seconds("due_before_start", due)
    return runwrites.row_params(
        script=run.script, server=run.server, pid=run.pid, generation=run.generation,
        master_id=run.master_id, master_pid=run.master_pid, run_id=run.run_id,
        started_ago=started_ago, ended_ago=ended_ago,
        due_ago=None if due is None else started_ago + due, outcome=outcome, error=error)


class HistoryStore:
    """Writes and reads ``daemon_run``; each method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # writes that end runs run in a real transaction (the master's engine autocommits
        # each statement otherwise): the rows and their counts commit together
        self._tx = engine.execution_options(isolation_level=_transaction_level(engine))

    def record_start(
        self,
        script: str,
        server: str,
        pid: int | None,
        generation: int | None = None,
        due_at: datetime | None = None,
    ) -> int:
        """Insert a ``running`` row started now; returns its id."""
        now = db_now_expr()
        stmt = insert(daemon_run).values(
            script=script, server=server, pid=pid, generation=generation, due_at=due_at,
            started_at=now, outcome=RUNNING,
        )
        with self.engine.begin() as conn:
            key = conn.execute(stmt).inserted_primary_key
        if key is None:  # pragma: no cover - every supported dialect reports it
            raise RuntimeError("the database did not report the new run's id")
        return int(key[0])

    def record_end(
        self, run_id: int, outcome: str, error: str | None = None, ended_ago: float = 0.0
    ) -> bool:
        """Close a run; False when no such run exists (it may have been pruned)."""
        _check_outcome(outcome, END_OUTCOMES)
        _check_seconds("ended_ago", ended_ago)
        with self._tx.begin() as conn:
            ended = conn.execute(_end_stmt(run_id, outcome, error, ended_ago)).rowcount == 1
            runcounts.count_ended(conn)
            return ended

    def record(self, run: RunRecord) -> int:
        """Insert a whole run (see ``RunRecord``); returns its id."""
        with self._tx.begin() as conn:
            key = conn.execute(self._insert(run)).inserted_primary_key
            runcounts.count_ended(conn)
        if key is None:  # pragma: no cover
            raise RuntimeError("the database did not report the new run's id")
        return int(key[0])

    def record_many(self, runs: list[RunRecord]) -> None:
        """Write several whole runs in one transaction (keyed ones idempotently)."""
        self.write_many(runs)

    def write_many(self, items: Sequence[PendingItem]) -> int:
        """Apply a batch of writes in one transaction (one statement per kind).

        Ends (``RunRecord`` with a key) first, then starts (``RunStart``), then, for each
        start under a lease generation, the runs of that script still open under an older
        generation are closed as ``lost`` (their lease was taken over). Keyed writes are
        idempotent (see ``runwrites``); unkeyed ``RunRecord``s are inserted as they are and
        ``RunEnd``s update their row by id. Returns how many runs were closed as lost.
        The runs the batch ended are added to the run counters (``runcounts.py``) in the
        same transaction (a real one, even on the master's autocommit engine).
        A write that met a dropped connection is retried once on a fresh one.
        """
        finals: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []
        starts: list[dict[str, Any]] = []
        seen: set[tuple[Any, Any]] = set()  # one start per key (replays may repeat one)
        grants: list[tuple[str, int, str]] = []
        by_id: list[RunEnd] = []
        for item in items:
            if isinstance(item, RunStart):
                if (item.master_id, item.run_id) in seen:
                    continue
                seen.add((item.master_id, item.run_id))
                starts.append(_start_params(item))
                if item.generation is not None:
                    grants.append((item.script, item.generation, item.server))
            elif isinstance(item, RunRecord):
                keyed = item.master_id is not None and item.run_id is not None
                (finals if keyed else plain).append(_final_params(item))
            else:
                _check_outcome(item.outcome, END_OUTCOMES)
                _check_seconds("ended_ago", item.ended_ago)
                by_id.append(item)
        if not items:
            return 0

        def body(conn: Connection) -> int:
            runwrites.upsert_final(conn, finals)
            runwrites.insert_plain(conn, plain)
            runwrites.insert_absent(conn, starts)
            for end in by_id:
                conn.execute(_end_stmt(end.run_id, end.outcome, end.error, end.ended_ago))
            lost = runwrites.close_taken_over(conn, grants)
            if finals or plain or by_id or lost:  # the runs this batch ended, counted with it
                runcounts.count_ended(conn)
            return lost

        return self._transaction(body)

    def _transaction(self, body: Callable[[Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                with self._tx.begin() as conn:
                    return body(conn)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert(self, run: RunRecord) -> Any:
        _check_outcome(run.outcome, END_OUTCOMES)
        _check_seconds("duration", run.duration)
        _check_seconds("ended_ago", run.ended_ago)
        due_at: Any = run.due_at
        if due_at is None and run.due_before_start is not None:
            due_at = db_now_plus(-(run.ended_ago + run.duration + run.due_before_start))
        stmt = insert(daemon_run).values(
            script=run.script, server=run.server, pid=run.pid, generation=run.generation,
            due_at=due_at,
            started_at=db_now_plus(-(run.ended_ago + run.duration)),
            ended_at=db_now_plus(-run.ended_ago),
            outcome=run.outcome, error=_clip(run.error),
            master_id=run.master_id, master_pid=run.master_pid, run_id=run.run_id, tally=1,
        )
        return stmt

    def write(self, item: PendingItem) -> None:
        """Apply one pending write."""
        if isinstance(item, RunRecord) and item.master_id is None:
            self.record(item)
        elif isinstance(item, RunEnd):
            self.record_end(item.run_id, item.outcome, item.error, item.ended_ago)
        else:
            self.write_many([item])

    # ----- closing runs whose master is gone (statements in ``runwrites``) ----------------
    def mark_lost(self, server: str, except_master: str | None = None,
                  why: str = "the master stopped before the run ended") -> int:
        """Close every run ``server`` left ``running`` as ``lost``; returns how many.

        For a master starting up (``except_master``: its own id, whose runs stay open): the
        runs an earlier master of the same server never finished.
        """
        return self._closed(runwrites.lost_of_server(server, except_master, why))

    def close_abandoned(self, stale_after: float, except_master: str | None = None) -> int:
        """Close as ``lost`` the open runs, started over ``stale_after`` s ago, whose master
        (server and pid) has sent no heartbeat for ``stale_after`` s (it died, was killed,
        or another master of its server replaced it); ``except_master``'s runs are left
        alone. Returns how many were closed."""
        _check_seconds("stale_after", stale_after)
        return self._closed(runwrites.lost_abandoned(stale_after, except_master))

    def close_lease_runs(self, script: str, generation: int, why: str) -> int:
        """Close as ``lost`` the open runs of ``script`` under lease ``generation`` or an
        older one (the lease was force-released); returns how many."""
        return self._closed(runwrites.lost_of_lease(script, generation, why))

    def _closed(self, stmt: Any) -> int:
        with self._tx.begin() as conn:
            closed = max(0, conn.execute(stmt).rowcount)
            if closed:
                runcounts.count_ended(conn)
            return closed

    def prune(self, older_than_days: float | None = None, rows: int = 0,
              batch: int = pruning.BATCH_ROWS) -> int:
        """Delete runs started more than ``older_than_days`` ago and, per script, all but
        the newest ``rows`` (0: no row bound), ``batch`` rows per statement, in one pass
        (``pruning.py``; the master prunes step by step instead); returns how many."""
        if older_than_days is not None:
            _check_seconds("older_than_days", older_than_days)
        retention = pruning.Retention(days=older_than_days, rows=rows)
        return sum(pruning.prune_all(self.engine, retention, batch).values())

    def forget_unrun(self, master_id: str, run_id: int) -> int:
        """Delete the row a lease grant wrote for a run that never started (still
        ``running``, nothing else written to it); how many (0 or 1)."""
        r = daemon_run
        stmt = delete(r).where(r.c.master_id == master_id, r.c.run_id == run_id,
                               r.c.outcome == RUNNING, r.c.pid.is_(None))
        with self._tx.begin() as conn:
            return max(0, conn.execute(stmt).rowcount)

    def ended_grants(self, grants: Sequence[tuple[str, int, str | None, int | None]]
                     ) -> set[str]:
        """Of held leases ``(script, generation, holder server, holder pid)``, the scripts
        whose run under that generation has ended (its row says so): a finished run whose
        deferred release has not landed yet (``panda-daemon locks``: "finished"). The run of
        a lease's current generation is among its script's newest rows (nobody else runs
        it meanwhile): one short index walk per lease."""
        r = daemon_run
        newest = (select(r.c.generation, r.c.server, r.c.master_pid, r.c.outcome)
                  .where(r.c.script == bindparam("p_script"))
                  .order_by(r.c.started_at.desc(), r.c.id.desc()).limit(ENDED_LOOK))
        found: set[str] = set()
        with self.engine.connect() as conn:
            for script, generation, server, pid in grants:
                for row in conn.execute(newest, {"p_script": script}):
                    if (row.generation, row.server, row.master_pid) == (generation, server, pid) \
                            and row.outcome != RUNNING:
                        found.add(script)
        return found

    def query(self, name: str | None = None, limit: int = 50) -> list[RunRow]:
        """The newest runs first, of one script or of all."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got: {limit}")
        stmt = select(daemon_run).order_by(daemon_run.c.started_at.desc(), daemon_run.c.id.desc())
        if name is not None:
            stmt = stmt.where(daemon_run.c.script == name)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.limit(limit)).all()
        return [RunRow(**row._mapping) for row in rows]

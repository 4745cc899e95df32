"""Run counters kept as runs end (``daemon_run_count``), so that ``/metrics`` reads a few
rows whatever the history holds.

One row per (script, server, outcome): how many runs ended so; the duration's sum (integer
microseconds: exact, so the order runs are added in never shows) and cumulative count per
bucket of ``DURATION_BUCKETS``; and, over the runs with a due time, the dispatch delay's
count, sum and cumulative bucket counts (``DELAY_BUCKETS``). Counts only go up: pruning
the history leaves them alone.

Who counts: every statement that ends a run (the master's batched end, an unkeyed whole
run, a run closed as ``lost``) sets ``daemon_run.tally = 1`` on the row it ends, and only
when it ends it (a re-sent end that changes nothing sets nothing); ``count_ended``, run at
the end of the same transaction, claims the rows with ``tally = 1`` (``FOR UPDATE SKIP
LOCKED`` where the database has it: two masters never claim one row), adds them to their
counters and sets ``tally = 0``. So a row written twice counts once, and the counts
commit with the rows. A run first closed as ``lost`` and then reported by its own master
counts under both outcomes (a counter never takes back). Rows written by a master of an
older release (``tally`` keeps its default 0) are not counted.

Migration 0007 creates the table and counts the history already there (``count_rows``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, literal, select, update

from pandaserver.db.base.tables import daemon_run, daemon_run_count
from pandaserver.db.base.upsert import dialect_insert

DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
DELAY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)
RUNNING = "running"
US = timedelta(microseconds=1)
KEY = ("script", "server", "outcome")
# the counter columns, in the order of ``Counts`` values
DURATION_LE = tuple(f"duration_le_{i}" for i in range(len(DURATION_BUCKETS)))
DELAY_LE = tuple(f"delay_le_{i}" for i in range(len(DELAY_BUCKETS)))
COLUMNS = ("runs", "duration_us", *DURATION_LE, "delays", "delay_us", *DELAY_LE)
CLAIM_BATCH = 5000  # rows claimed per statement (a backlog replayed after an outage)

Key = tuple[str, str, str]
Counts = dict[Key, list[int]]  # values in the order of COLUMNS


def _add(into: list[int], seconds_us: int, buckets: Sequence[float], at: int) -> None:
    """Count one value (microseconds) at ``at``: its sum, then a cumulative count per
    bucket (the value counts in every bucket whose edge it does not exceed)."""
    into[at] += seconds_us
    for i, edge in enumerate(buckets):
        if seconds_us <= edge * 1_000_000:
            into[at + 1 + i] += 1


def tally(rows: Iterable[Any], into: Counts | None = None) -> Counts:
    """Add ended rows (``script``, ``server``, ``outcome``, ``started_at``, ``ended_at``,
    ``due_at``) to ``into``: the counters of ``daemon_run_count``. Running rows are left
    out; a NULL ``ended_at`` counts the run but not its duration, a NULL ``due_at`` no
    delay. Pure."""
    counts: Counts = {} if into is None else into
    width = len(COLUMNS)
    d = len(DURATION_BUCKETS)
    for row in rows:
        if row.outcome == RUNNING:
            continue
        values = counts.setdefault((row.script, row.server, row.outcome), [0] * width)
        values[0] += 1
        started: datetime = row.started_at
        if row.ended_at is not None:
            _add(values, (row.ended_at - started) // US, DURATION_BUCKETS, 1)
        if row.due_at is not None:
            values[2 + d] += 1
            _add(values, (started - row.due_at) // US, DELAY_BUCKETS, 3 + d)
    return counts


def _claim(conn: Connection) -> list[Any]:
    """The ended rows not yet counted, locked for this transaction (those another
    transaction holds are skipped: it counts them), at most ``CLAIM_BATCH``."""
    r = daemon_run
    stmt = (select(r.c.id, r.c.script, r.c.server, r.c.outcome, r.c.started_at, r.c.ended_at,
                   r.c.due_at)
            .where(r.c.tally == 1).limit(CLAIM_BATCH))
    if conn.dialect.name != "sqlite":  # SQLite: one writer at a time holds the database
        stmt = stmt.with_for_update(skip_locked=True)
    return list(conn.execute(stmt).all())


def count_ended(conn: Connection) -> int:
    """Count the runs ended since the last count (``tally = 1``) and mark them counted, in
    the caller's transaction; returns how many. Cheap when nothing ended: one indexed
    read."""
    total = 0
    while True:
        rows = _claim(conn)
        if not rows:
            return total
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 500):
            conn.execute(update(daemon_run).where(daemon_run.c.id.in_(ids[start:start + 500]))
                         .values(tally=0))
        add_counts(conn, tally(rows))
        total += len(rows)
        if len(rows) < CLAIM_BATCH:
            return total


def add_counts(conn: Connection, counts: Counts) -> None:
    """Add ``counts`` to ``daemon_run_count``: one insert-or-add statement (``ON CONFLICT
    DO UPDATE`` / ``ON DUPLICATE KEY UPDATE``: it locks a row once, for writing, so two
    writers adding to the same row wait for each other rather than deadlock), rows in key
    order."""
    if not counts:
        return
    c = daemon_run_count
    name = conn.dialect.name
    stmt: Any
    if name in ("mysql", "mariadb"):
        stmt = dialect_insert("mysql")(c)
        stmt = stmt.on_duplicate_key_update({col: c.c[col] + stmt.inserted[col]
                                             for col in COLUMNS})
    else:
        stmt = dialect_insert("postgresql" if name == "postgresql" else "sqlite")(c)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(KEY), set_={col: c.c[col] + stmt.excluded[col]
                                            for col in COLUMNS})
    conn.execute(stmt, [{**dict(zip(KEY, key, strict=True)),
                         **dict(zip(COLUMNS, counts[key], strict=True))}
                        for key in sorted(counts)])


def count_rows(conn: Connection, batch: int = 20000) -> int:
    """Count every ended row of the history into ``daemon_run_count`` (after the table was
    created, for the rows written before: migration 0007). Reads the history once, in
    ``batch``-row steps by id; returns how many rows were counted."""
    r = daemon_run
    counts: Counts = {}
    seen = 0
    last: int | None = None
    while True:
        stmt = (select(r.c.id, r.c.script, r.c.server, r.c.outcome, r.c.started_at,
                       r.c.ended_at, r.c.due_at)
                .where(r.c.outcome != literal(RUNNING), r.c.tally == 0)
                .order_by(r.c.id).limit(batch))
        if last is not None:
            stmt = stmt.where(r.c.id > last)
        rows = conn.execute(stmt).all()
        if not rows:
            break
        tally(rows, counts)
        seen += len(rows)
        last = rows[-1].id
    add_counts(conn, counts)
    return seen


def read_counts(conn: Connection) -> list[tuple[Key, list[int]]]:
    """Every counter row: (script, server, outcome) and its values (``COLUMNS``)."""
    c = daemon_run_count
    rows = conn.execute(select(*(c.c[k] for k in KEY), *(c.c[v] for v in COLUMNS))).all()
    return [((str(row[0]), str(row[1]), str(row[2])), [int(v or 0) for v in row[3:]])
            for row in rows]


def insert_counted(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert history rows as they are and count them (tools, tests, benchmarks)."""
    if rows:
        conn.execute(insert(daemon_run), [
            {**row, "tally": 0 if row.get("outcome") == RUNNING else 1} for row in rows])
        count_ended(conn)

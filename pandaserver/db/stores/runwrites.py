"""The statements that write keyed run rows in batches, and close runs found abandoned.

Every run the master dispatches is keyed by ``(master_id, run_id)`` (unique). Its *start*
is an insert that does nothing when the row exists; its *end* (or a whole run written at
once, a skipped attempt) inserts the complete row or, when the row exists, overwrites it
while it is still ``running`` or was closed as ``lost`` by someone who found its master
gone (the master's own account of how it ended wins; a finished row is never touched).
So any write can be applied twice, late, or in any order: one row per run, always.
A write that ends a row sets ``tally = 1`` on it (only when it ends it), for the run
counters (``runcounts.py``) to count it once in the same transaction.

PostgreSQL and SQLite spell both as ``INSERT ... ON CONFLICT (master_id, run_id) DO
NOTHING / DO UPDATE ... WHERE``; MySQL/MariaDB as ``INSERT ... ON DUPLICATE KEY UPDATE``
with every assignment ``IF(<old outcome is running or lost>, new, old)`` and ``outcome``
assigned last, so the condition always sees the old outcome. Each statement takes a
whole batch (executemany; one multi-row statement where the driver allows).

Times are relative to the database clock at the write (``*_ago`` seconds in the past).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Float,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    null,
    or_,
    update,
)

from pandaserver.db.base.servertime import db_now_expr, db_now_plus
from pandaserver.db.base.tables import daemon_run, daemon_server
from pandaserver.db.base.upsert import UnsupportedDatabase, dialect_insert

RUNNING = "running"
LOST = "lost"
KEY = ("master_id", "run_id")
# overwritten by an end: everything but the id and the key (``tally``: 1, to be counted
# by runcounts.count_ended in the same transaction)
_UPDATED = ("script", "server", "pid", "generation", "due_at", "started_at", "ended_at",
            "error", "tally", "outcome")  # outcome last (MySQL assigns left to right)
# a start completes the bare row its lease grant wrote (grantrun.py; no worker pid yet),
# while it runs or after the release that ended it (grantrun.py) came first: what only the
# start knows. pid last: MySQL assigns in order, and the condition reads pid
_STARTED = ("due_at", "started_at", "pid")


def _values() -> dict[str, Any]:
    """The column values of one row, from the ``p_*`` parameters of ``row_params``."""
    return {
        "script": bindparam("p_script"), "server": bindparam("p_server"),
        "pid": bindparam("p_pid"), "generation": bindparam("p_generation"),
        "master_id": bindparam("p_master_id"), "master_pid": bindparam("p_master_pid"),
        "run_id": bindparam("p_run_id"),
        "due_at": case((bindparam("p_has_due", type_=Boolean),
                        db_now_plus(bindparam("p_due_ago", type_=Float))), else_=null()),
        "started_at": db_now_plus(bindparam("p_started_ago", type_=Float)),
        "ended_at": case((bindparam("p_has_end", type_=Boolean),
                          db_now_plus(bindparam("p_ended_ago", type_=Float))), else_=null()),
        "outcome": bindparam("p_outcome"), "error": bindparam("p_error"),
        "tally": bindparam("p_tally"),
    }


def row_params(*, script: str, server: str, pid: int | None, generation: int | None,
               master_id: str | None, master_pid: int | None, run_id: int | None,
               started_ago: float, ended_ago: float | None, due_ago: float | None,
               outcome: str, error: str | None) -> dict[str, Any]:
    """Parameters of one row for the statements below (seconds before the write)."""
    return {
        "p_script": script, "p_server": server, "p_pid": pid, "p_generation": generation,
        "p_master_id": master_id, "p_master_pid": master_pid, "p_run_id": run_id,
        "p_has_due": due_ago is not None, "p_due_ago": -(due_ago or 0.0),
        "p_started_ago": -started_ago,
        "p_has_end": ended_ago is not None, "p_ended_ago": -(ended_ago or 0.0),
        "p_outcome": outcome, "p_error": error,
        "p_tally": 0 if outcome == RUNNING else 1,  # an ended row waits to be counted
    }


def _dialect(conn: Connection) -> str:
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        return name
    if name in ("mysql", "mariadb"):
        return "mysql"
    raise UnsupportedDatabase(f"run history has no keyed write for the {name} database")


def insert_absent(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert each row unless a row with its key exists (the start of a run); a row that
    exists and is still ``running``, or has no worker pid (written by the run's lease grant,
    maybe ended by its release: ``grantrun.py``), gets the start's worker pid and times;
    anything else is left as it is (never its outcome)."""
    if not rows:
        return
    kind = _dialect(conn)
    t = daemon_run
    running = or_(t.c.outcome == literal(RUNNING), t.c.pid.is_(None))
    stmt: Any
    if kind == "mysql":
        stmt = dialect_insert("mysql")(t).values(_values())
        stmt = stmt.on_duplicate_key_update([
            (name, func.IF(running, stmt.inserted[name], t.c[name])) for name in _STARTED])
    else:
        stmt = dialect_insert(kind)(t).values(_values())
        stmt = stmt.on_conflict_do_update(
            index_elements=list(KEY), set_={name: stmt.excluded[name] for name in _STARTED},
            where=running)
    conn.execute(_batched(stmt, kind), list(rows))


def upsert_final(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert each complete row, or overwrite its row while that is running or lost."""
    if not rows:
        return
    kind = _dialect(conn)
    t = daemon_run
    open_row = or_(t.c.outcome == literal(RUNNING), t.c.outcome == literal(LOST))
    stmt: Any
    if kind == "mysql":
        stmt = dialect_insert("mysql")(t).values(_values())
        stmt = stmt.on_duplicate_key_update([
            (name, func.IF(open_row, stmt.inserted[name], t.c[name])) for name in _UPDATED])
    else:
        stmt = dialect_insert(kind)(t).values(_values())
        stmt = stmt.on_conflict_do_update(
            index_elements=list(KEY), set_={name: stmt.excluded[name] for name in _UPDATED},
            where=open_row)
    conn.execute(_batched(stmt, kind), list(rows))


def _batched(stmt: Any, kind: str) -> Any:
    """On PostgreSQL, an upsert with RETURNING is sent as one multi-row statement per
    batch (SQLAlchemy's "insertmanyvalues"; without RETURNING each row is a round trip).
    PyMySQL rewrites an executemany INSERT into one statement by itself; SQLite runs in
    process."""
    return stmt.returning(daemon_run.c.id) if kind == "postgresql" else stmt


def close_taken_over(conn: Connection, grants: Sequence[tuple[str, int, str]]) -> int:
    """For each ``(script, generation, server)`` just granted: close as ``lost`` the runs
    of that script still open under an older lease generation (their lease expired or was
    taken, so their holder died, hung or was fenced). Returns how many were closed."""
    if not grants:
        return 0
    t = daemon_run
    stmt = (
        update(t)
        .where(t.c.script == bindparam("p_script"), t.c.outcome == RUNNING,
               t.c.generation < bindparam("p_generation"))
        .values(outcome=LOST, ended_at=db_now_expr(), error=bindparam("p_why"), tally=1)
    )
    params = [{"p_script": script, "p_generation": generation,
               "p_why": f"its lease was taken over (generation {generation} went to {server}):"
                        " its master died, hung or lost the database during the run"}
              for script, generation, server in grants]
    result = conn.execute(stmt, params)
    return max(0, result.rowcount)


def insert_plain(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert each row as it is (unkeyed rows: tools, tests, older callers)."""
    if rows:
        conn.execute(insert(daemon_run).values(_values()), list(rows))


def _lost(where: list[Any], why: str) -> Any:
    return (update(daemon_run).where(daemon_run.c.outcome == RUNNING, *where)
            .values(outcome=LOST, ended_at=db_now_expr(), error=why, tally=1))


def _not_of(master: str | None) -> list[Any]:
    t = daemon_run
    return [] if master is None else [or_(t.c.master_id.is_(None), t.c.master_id != master)]


def lost_of_server(server: str, except_master: str | None, why: str) -> Any:
    """Close the open runs of ``server`` (but those of ``except_master``)."""
    return _lost([daemon_run.c.server == server, *_not_of(except_master)], why)


def lost_abandoned(stale_after: float, except_master: str | None) -> Any:
    """Close the open runs started over ``stale_after`` s ago whose server and master pid
    have no ``daemon_server`` row that beat within ``stale_after`` s."""
    t, s = daemon_run, daemon_server
    cutoff = db_now_plus(-stale_after)
    beating = exists().where(s.c.server == t.c.server, s.c.pid == t.c.master_pid,
                             s.c.last_seen >= cutoff)
    why = (f"its master sent no heartbeat for {stale_after:g} s during the run"
           " (it died, was killed or lost the database)")
    return _lost([t.c.started_at < cutoff, ~beating, *_not_of(except_master)], why)


def lost_of_lease(script: str, generation: int, why: str) -> Any:
    """Close the open runs of ``script`` under lease ``generation`` or an older one."""
    return _lost([daemon_run.c.script == script, daemon_run.c.generation <= generation], why)

"""The run row a sync lease's grant writes itself, so no granted generation is left without
a history row.

A master asking for a lease names the run it will hand the lease to (``run_id``: its
number for the run, reserved before asking; the master's random id is the grant's holder
token). When the lease is granted, the same statement (PostgreSQL: one more CTE of the
grant, ``WITH attempt AS (INSERT ... RETURNING ...), granted_run AS (INSERT INTO daemon_run
... SELECT ... FROM attempt)``) or the same transaction (SQLite, MySQL/MariaDB: an insert after
the grant, before the commit) inserts that run's ``running`` row, keyed by ``(master_id,
run_id)`` like every write of the master's history (``runwrites.py``). So a master killed
at any moment after its grant commits leaves a row that the next holder's start (``close
_taken_over``), the sweep of dead masters' runs or the next master of its server closes as
``lost``; a master that lives writes the run's start and end over the same key, as before.
A grant that asked without a run (tools, a run-once master, a previous release) writes no
row, as before.

A grant that also releases the holder's own finished generation (``finished``: the deferred
release of daemons/fleet/releases.py) ends that run's row too when the holder says how it
ended (``Ended``): so the run just before the new grant is not left ``running`` in the
database while its end waits in the master's memory for the next history batch, where a kill
would make it ``lost``. The end is written as the history writer's would (outcome, end time,
error, ``tally = 1`` to be counted once by the next count: runcounts.py), only while the row
is open (``running``, or ``lost`` by someone who found its master gone: the master's own
account wins, as in runwrites.py); the writer's own write of it later changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    literal,
    literal_column,
    or_,
    select,
    true,
    update,
)

from pandaserver.db.base.servertime import db_now_expr, db_now_plus
from pandaserver.db.base.tables import daemon_lease, daemon_run
from pandaserver.db.base.upsert import dialect_insert
from pandaserver.db.stores.runrecords import END_OUTCOMES, LOST, clip_error

RUNNING = "running"
# the row's columns, in the order of ``_values``
COLUMNS = ("script", "server", "master_id", "master_pid", "run_id", "generation",
           "started_at", "outcome", "tally")
KEY = ("master_id", "run_id")


@dataclass(frozen=True)
class Ended:
    """How the holder's finished run (``run_id``, under the generation the grant releases)
    ended: ``ended_ago`` seconds before the statement."""

    run_id: int
    outcome: str
    error: str | None
    ended_ago: float

    def later(self, seconds: float) -> Ended:
        """The same end, told ``seconds`` later."""
        return replace(self, ended_ago=self.ended_ago + max(0.0, seconds))

    def __post_init__(self) -> None:
        if self.outcome not in END_OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(END_OUTCOMES)}, got:"
                             f" {self.outcome!r}")


def params(run_id: int | None, ended: Ended | None = None) -> dict[str, Any]:
    """The grant statement's parameters for the run (None: no row) and the finished run
    it ends (None: none)."""
    return {"lease_run": run_id,
            "lease_end_run": None if ended is None else ended.run_id,
            "lease_end_outcome": None if ended is None else ended.outcome,
            "lease_end_error": None if ended is None else clip_error(ended.error),
            "lease_end_ago": 0.0 if ended is None else -max(0.0, ended.ended_ago)}


def _values(generation: Any) -> list[Any]:
    """The row's values from the grant's own parameters (``leasegrant.py``: ``lease_name``,
    ``lease_server``, ``lease_token``, ``lease_pid``) and the generation granted."""
    t = daemon_lease
    return [bindparam("lease_name", type_=t.c.name.type),
            bindparam("lease_server", type_=t.c.owner_server.type),
            bindparam("lease_token", type_=String(32)),
            bindparam("lease_pid", type_=Integer()),
            bindparam("lease_run", type_=BigInteger()),
            generation, db_now_expr(), literal(RUNNING), literal(0)]


def _wanted() -> Any:
    return and_(bindparam("lease_run", type_=BigInteger()).is_not(None),
                bindparam("lease_token", type_=String(32)).is_not(None))


def _end(granted: Any) -> Any:
    """The update that ends the finished run's row, when ``granted`` holds."""
    r = daemon_run
    return (update(r)
            .where(r.c.master_id == bindparam("lease_token", type_=String(32)),
                   r.c.run_id == bindparam("lease_end_run", type_=BigInteger()),
                   or_(r.c.outcome == literal(RUNNING), r.c.outcome == literal(LOST)),
                   granted)
            .ordered_values(  # tally before outcome: MySQL assigns in order
                (r.c.tally, literal(1)),
                (r.c.ended_at, db_now_plus(bindparam("lease_end_ago", type_=Float()))),
                (r.c.error, bindparam("lease_end_error", type_=Text())),
                (r.c.outcome, bindparam("lease_end_outcome", type_=String(16)))))


def ctes(attempt: Any) -> list[Any]:
    """PostgreSQL: the insert of the granted run's row and the end of the finished run's,
    as CTEs of the grant statement (``attempt``: the grant's CTE; it returns a row only
    when granted)."""
    stmt = dialect_insert("postgresql")(daemon_run).from_select(
        list(COLUMNS), select(*_values(attempt.c.generation)).select_from(attempt)
        .where(_wanted()))
    granted = select(literal_column("1")).select_from(attempt).exists()
    return [stmt.on_conflict_do_nothing(index_elements=list(KEY)).cte("granted_run"),
            _end(granted).cte("ended_run")]


def release_with_end(conn: Connection, release: Any, bound: dict[str, Any],
                     cache: dict[str, Any]) -> int:
    """Run ``release`` (an update of the lease) and end the finished run's row (``bound``:
    ``params(None, ended)`` and ``lease_token``): one statement on PostgreSQL (a CTE),
    the end first elsewhere; the release's row count. The end is written whether or not
    the lease was still the holder's: it is the run's own account."""
    if conn.dialect.name == "postgresql":
        return int(conn.execute(release.add_cte(_end(true()).cte("ended_run")),
                                bound).rowcount)
    name = "mysql" if conn.dialect.name in ("mysql", "mariadb") else conn.dialect.name
    ending = cache.get(f"{name}-end")
    if ending is None:
        ending = cache[f"{name}-end"] = _end(true())
    conn.execute(ending, bound)
    return int(conn.execute(release).rowcount)


def insert_row(conn: Connection, generation: int, bound: dict[str, Any],
               cache: dict[str, Any]) -> None:
    """SQLite, MySQL/MariaDB: insert the granted run's row and end the finished run's, in
    the grant's transaction (nothing when the grant named neither). ``cache``: the
    statements, built once per dialect."""
    if bound.get("lease_token") is None:
        return
    name = "mysql" if conn.dialect.name in ("mysql", "mariadb") else conn.dialect.name
    if bound.get("lease_end_run") is not None:
        ending = cache.get(f"{name}-end")
        if ending is None:
            ending = cache[f"{name}-end"] = _end(true())
        conn.execute(ending, bound)
    if bound.get("lease_run") is None:
        return
    stmt = cache.get(name)
    if stmt is None:
        values = dict(zip(COLUMNS, _values(bindparam("lease_generation", type_=BigInteger())),
                          strict=True))
        insert = dialect_insert(name)(daemon_run).values(values)
        stmt = (insert.on_duplicate_key_update(id=daemon_run.c.id) if name == "mysql"
                else insert.on_conflict_do_nothing(index_elements=list(KEY)))
        cache[name] = stmt
    conn.execute(stmt, {**bound, "lease_generation": generation})

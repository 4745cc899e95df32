"""Read what the fleet pages need from the shared database: short reads, never a write.

Every time is the database's. ``read_fleet`` is five statements: the heartbeats and the
leases (through their stores), the database clock, and two reads of the history (the newest
run per script and server; per script its first run and last success). Neither reads the
whole history: both skip through indexes (``pandaserver/db/skipscan.py``), one probe per
script or (script, server) pair, so they cost the same with a day or a year of history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, select

from pandaserver.db import skipscan
from pandaserver.db.clock import UtcDateTime, db_now
from pandaserver.db.heartbeat import HeartbeatStore, ServerRow
from pandaserver.db.history import OK, RunRow
from pandaserver.db.leases import LeaseRow, LeaseStore
from pandaserver.db.tables import daemon_run
from pandaserver.web.model import ScriptFacts

MAX_RUNS = 2000


@dataclass(frozen=True)
class FleetSnapshot:
    db_now: datetime
    servers: list[ServerRow]
    leases: list[LeaseRow]
    last_runs: list[RunRow]  # newest non-skipped run per (script, server)
    facts: dict[str, ScriptFacts]


def read_fleet(engine: Engine) -> FleetSnapshot:
    servers = HeartbeatStore(engine).list_servers()
    leases = LeaseStore(engine).list_leases()
    with engine.connect() as conn:
        now = db_now(conn)
        return FleetSnapshot(db_now=now, servers=servers, leases=leases,
                             last_runs=_last_runs(conn), facts=_facts(conn))


def _last_runs(conn: Connection) -> list[RunRow]:
    """Per (script, server) with a run that is not a skipped attempt, its newest such run
    (the later id of two at the same instant): one index probe per pair."""
    r = daemon_run
    pairs = skipscan.newest_per_pair()
    stmt = select(r).join(pairs, r.c.id == pairs.c.id).order_by(r.c.script, r.c.server)
    return [RunRow(**row._mapping) for row in conn.execute(stmt).all()]


def _facts(conn: Connection) -> dict[str, ScriptFacts]:
    """Per script: its first run and the end of its last success (two probes each)."""
    a, b = daemon_run.alias("first"), daemon_run.alias("success")
    names = skipscan.scripts()
    first = (select(func.min(a.c.started_at, type_=UtcDateTime()))
             .where(a.c.script == names.c.script).scalar_subquery())
    success = (select(func.max(b.c.ended_at, type_=UtcDateTime()))
               .where(b.c.script == names.c.script, b.c.outcome == OK).scalar_subquery())
    stmt = select(names.c.script, first.label("first"), success.label("success")
                  ).where(names.c.script.is_not(None))
    return {row.script: ScriptFacts(first_seen=row.first, last_success=row.success)
            for row in conn.execute(stmt).all()}


def read_runs(engine: Engine, name: str, limit: int) -> tuple[datetime, list[RunRow]]:
    """The database's now and the newest ``limit`` runs of ``name`` (skips included)."""
    limit = max(1, min(limit, MAX_RUNS))
    r = daemon_run
    stmt = select(r).where(r.c.script == name).order_by(r.c.started_at.desc(), r.c.id.desc()
                                                         ).limit(limit)
    with engine.connect() as conn:
        now = db_now(conn)
        return now, [RunRow(**row._mapping) for row in conn.execute(stmt).all()]

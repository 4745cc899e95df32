"""Read what the fleet pages need from the shared database: short reads, never a write.

Every time is the database's. ``read_fleet`` is five statements: the heartbeats and the
leases (through their stores), the database clock, and two aggregates over the history
(the newest run per script and server; per script its first run and last success).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, and_, case, func, select

from pandaserver.db.clock import UtcDateTime, db_now
from pandaserver.db.heartbeat import HeartbeatStore, ServerRow
from pandaserver.db.history import OK, SKIPPED, RunRow
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
    r = daemon_run
    newest = (
        select(r.c.script, r.c.server, func.max(r.c.started_at).label("last"))
        .where(r.c.outcome != SKIPPED)
        .group_by(r.c.script, r.c.server)
        .subquery()
    )
    stmt = select(r).join(newest, and_(r.c.script == newest.c.script,
                                       r.c.server == newest.c.server,
                                       r.c.started_at == newest.c.last)
                          ).where(r.c.outcome != SKIPPED).order_by(r.c.id)
    found: dict[tuple[str, str], RunRow] = {}
    for row in conn.execute(stmt).all():
        run = RunRow(**row._mapping)
        found[(run.script, run.server)] = run  # two at the same instant: the later id
    return list(found.values())


def _facts(conn: Connection) -> dict[str, ScriptFacts]:
    r = daemon_run
    success = func.max(case((r.c.outcome == OK, r.c.ended_at), else_=None),
                       type_=UtcDateTime())
    stmt = select(r.c.script, func.min(r.c.started_at, type_=UtcDateTime()).label("first"),
                  success.label("success")).group_by(r.c.script)
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

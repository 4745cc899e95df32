"""Read what the fleet pages need from the shared database: short reads, never a write.

Every time is the database's. ``read_fleet`` is five statements: the heartbeats and the
leases (through their stores), the database clock, and two reads of the history (the newest
run per script and server; per script its first run and last success). Neither reads the
whole history: both skip through indexes (``pandaserver/db/stores/skipscan.py``), one probe per
script or (script, server) pair, so they cost the same with a day or a year of history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, func, literal, select

from pandaserver.db.base.servertime import UtcDateTime, db_now, db_now_expr
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores import skipscan
from pandaserver.db.stores.heartbeat import HeartbeatStore, servers_statement
from pandaserver.db.stores.history import with_finished
from pandaserver.db.stores.leases import LeaseStore, leases_statement
from pandaserver.db.stores.runrecords import OK, RunRow
from pandaserver.web.model import FleetSnapshot as FleetSnapshot
from pandaserver.web.model import ScriptFacts

MAX_RUNS = 2000


def read_fleet(engine: Engine, script: str | None = None) -> FleetSnapshot:
    """The fleet; with ``script``, only what that script's view needs (its lease, its newest
    run per server and its facts, beside every server): one probe per server of that script
    instead of one per pair of the fleet."""
    servers = HeartbeatStore(engine).list_servers()
    leases = LeaseStore(engine).list_leases()
    if script is not None:
        leases = [lease for lease in leases if lease.name == script]
    leases = with_finished(engine, leases)
    with engine.connect() as conn:
        now = db_now(conn)
        last_runs = [RunRow(**row._mapping)
                     for row in conn.execute(_last_runs_statement(script)).all()]
        facts = {row.script: ScriptFacts(first_seen=row.first, last_success=row.success)
                 for row in conn.execute(_facts_statement(script)).all()
                 if script is None or row.first is not None or row.success is not None}
        return FleetSnapshot(db_now=now, servers=servers, leases=leases,
                             last_runs=last_runs, facts=facts)


def fleet_statements() -> dict[str, Any]:
    """``read_fleet``'s statements for the whole fleet, as it runs them on SQLite: compiled
    and checked in by ``pandaserver.web.fleetsqlite`` (``fleet`` without SQLAlchemy)."""
    return {"servers": servers_statement(), "leases": leases_statement(),
            "db_now": select(db_now_expr()),  # what servertime.db_now reads on SQLite
            "last_runs": _last_runs_statement(None), "facts": _facts_statement(None)}


def _last_runs_statement(script: str | None) -> Any:
    """Per (script, server) with a run that is not a skipped attempt, its newest such run
    (the later id of two at the same instant): one index probe per pair."""
    r = daemon_run
    pairs = skipscan.newest_per_pair(script=script)
    return select(r).join(pairs, r.c.id == pairs.c.id).order_by(r.c.script, r.c.server)


def _facts_statement(script: str | None) -> Any:
    """Per script: its first run and the end of its last success (two probes each)."""
    a, b = daemon_run.alias("first"), daemon_run.alias("success")
    names: Any = skipscan.scripts() if script is None else select(
        literal(script, String()).label("script")).subquery("one")
    first = (select(func.min(a.c.started_at, type_=UtcDateTime()))
             .where(a.c.script == names.c.script).scalar_subquery())
    success = (select(func.max(b.c.ended_at, type_=UtcDateTime()))
               .where(b.c.script == names.c.script, b.c.outcome == OK).scalar_subquery())
    return select(names.c.script, first.label("first"), success.label("success")
                  ).where(names.c.script.is_not(None))


def read_runs(engine: Engine, name: str, limit: int) -> tuple[datetime, list[RunRow]]:
    """The database's now and the newest ``limit`` runs of ``name`` (skips included)."""
    limit = max(1, min(limit, MAX_RUNS))
    r = daemon_run
    stmt = select(r).where(r.c.script == name).order_by(r.c.started_at.desc(), r.c.id.desc()
                                                         ).limit(limit)
    with engine.connect() as conn:
        now = db_now(conn)
        return now, [RunRow(**row._mapping) for row in conn.execute(stmt).all()]

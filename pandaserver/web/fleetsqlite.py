"""``panda-daemon fleet`` on a SQLite file without SQLAlchemy: the fleet's reads through
``sqlite3``.

``read_fleet(conn)`` is ``queries.read_fleet(engine)`` (the whole fleet) on a connection
from ``pandaserver.db.direct.sqlitedirect.opened``: it runs ``SQLITE``, the very statements
``queries.fleet_statements()`` builds, compiled for SQLite (constants inline) and checked
in, and reads each row back as SQLAlchemy would (``TIMES``: the timestamp columns, as aware
UTC datetimes). tests/unit/test_fleet_sqlite_texts.py compiles them again and compares, so
they cannot drift; an integration test compares the two overviews of one file.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from pandaserver.db.direct.fleetrows import ServerRow, lease_row
from pandaserver.db.direct.sqlitedirect import typed_rows, utc
from pandaserver.db.stores.runrecords import RunRow
from pandaserver.web.model import FleetSnapshot, ScriptFacts

# name -> the statement of queries.fleet_statements(), compiled for SQLite
SQLITE = {
    "servers": (
        'SELECT daemon_server.server, daemon_server.pid, daemon_server.version,'
        ' daemon_server.started_at, daemon_server.last_seen, daemon_server.config_hash,'
        " daemon_server.server_time, daemon_server.state, strftime('%Y-%m-%d %H:%M:%f000',"
        " 'now') AS db_now \nFROM daemon_server ORDER BY daemon_server.server"
    ),
    "leases": (
        'SELECT daemon_lease.name, daemon_lease.generation, daemon_lease.owner_server,'
        ' daemon_lease.owner_pid, daemon_lease.acquired_at, daemon_lease.expires_at,'
        ' daemon_lease.next_due, daemon_lease.period, daemon_lease.updated_at,'
        ' daemon_lease.contended, daemon_lease.contended_by, daemon_lease.contended_at,'
        " daemon_lease.owner_token, daemon_lease.firing, strftime('%Y-%m-%d %H:%M:%f000',"
        " 'now') AS db_now \nFROM daemon_lease ORDER BY daemon_lease.name"
    ),
    "db_now": (
        "SELECT strftime('%Y-%m-%d %H:%M:%f000', 'now') AS db_now_1"
    ),
    "last_runs": (
        'WITH RECURSIVE pairs(script, server, id) AS \n(SELECT p1.script AS script,'
        ' p1.server AS server, p1.id AS id \nFROM daemon_run AS p1 \nWHERE p1.id = (SELECT'
        " p0.id \nFROM daemon_run AS p0 \nWHERE p0.outcome != 'skipped' ORDER BY p0.script"
        ' DESC, p0.server DESC, p0.started_at DESC, p0.id DESC\n LIMIT 1 OFFSET 0) UNION'
        ' ALL SELECT p3.script AS script, p3.server AS server, p3.id AS id \nFROM pairs'
        ' JOIN daemon_run AS p3 ON p3.id = coalesce((SELECT p2.id \nFROM daemon_run AS p2'
        ' \nWHERE p2.script = pairs.script AND p2.server < pairs.server AND p2.outcome !='
        " 'skipped' ORDER BY p2.script DESC, p2.server DESC, p2.started_at DESC, p2.id"
        ' DESC\n LIMIT 1 OFFSET 0), (SELECT p4.id \nFROM daemon_run AS p4 \nWHERE p4.script'
        " < pairs.script AND p4.outcome != 'skipped' ORDER BY p4.script DESC, p4.server"
        ' DESC, p4.started_at DESC, p4.id DESC\n LIMIT 1 OFFSET 0)))\n SELECT'
        ' daemon_run.id, daemon_run.script, daemon_run.server, daemon_run.pid,'
        ' daemon_run.generation, daemon_run.due_at, daemon_run.started_at,'
        ' daemon_run.ended_at, daemon_run.outcome, daemon_run.error, daemon_run.master_id,'
        ' daemon_run.master_pid, daemon_run.run_id, daemon_run.tally \nFROM daemon_run JOIN'
        ' pairs ON daemon_run.id = pairs.id ORDER BY daemon_run.script, daemon_run.server'
    ),
    "facts": (
        'WITH RECURSIVE scripts(script) AS \n(SELECT min(s0.script) AS script \nFROM'
        ' daemon_run AS s0 UNION ALL SELECT (SELECT min(s1.script) AS min_2 \nFROM'
        ' daemon_run AS s1 \nWHERE s1.script > scripts.script) AS anon_1 \nFROM scripts'
        ' \nWHERE scripts.script IS NOT NULL)\n SELECT scripts.script, (SELECT'
        ' min(first.started_at) AS min_1 \nFROM daemon_run AS first \nWHERE first.script ='
        ' scripts.script) AS first, (SELECT max(success.ended_at) AS max_1 \nFROM'
        ' daemon_run AS success \nWHERE success.script = scripts.script AND success.outcome'
        " = 'ok') AS success \nFROM scripts \nWHERE scripts.script IS NOT NULL"
    ),
}
# the columns of each that are timestamps (UtcDateTime)
TIMES = {
    "servers": ("started_at", "last_seen", "server_time", "db_now"),
    "leases": ("acquired_at", "expires_at", "next_due", "updated_at", "contended_at", "firing",
               "db_now"),
    "last_runs": ("due_at", "started_at", "ended_at"),
    "facts": ("first", "success"),
}


def _rows(conn: sqlite3.Connection, name: str) -> list[dict[str, Any]]:
    return typed_rows(conn.execute(SQLITE[name]), TIMES[name])


def read_fleet(conn: sqlite3.Connection) -> FleetSnapshot:
    """``queries.read_fleet(engine)`` through ``sqlite3``: the same rows, the same objects."""
    servers = [ServerRow(**row) for row in _rows(conn, "servers")]
    leases = [lease_row(row) for row in _rows(conn, "leases")]
    now = utc(conn.execute(SQLITE["db_now"]).fetchone()[0])
    assert now is not None  # the clock is never NULL
    last_runs = [RunRow(**row) for row in _rows(conn, "last_runs")]
    facts = {row["script"]: ScriptFacts(first_seen=row["first"], last_success=row["success"])
             for row in _rows(conn, "facts")}
    return FleetSnapshot(db_now=now, servers=servers, leases=leases, last_runs=last_runs,
                         facts=facts)

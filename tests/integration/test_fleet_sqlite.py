"""``panda-daemon fleet`` on a SQLite file reads through ``sqlite3`` (web/fleetsqlite.py)
exactly what ``queries.read_fleet`` reads through SQLAlchemy: servers, leases, the newest
run per pair and each script's facts, with the same types."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, insert

from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_lease, daemon_run
from pandaserver.db.direct.sqlitedirect import opened
from pandaserver.db.stores.heartbeat import HeartbeatStore
from pandaserver.db.stores.operator_commands import ControlStore
from pandaserver.db.stores.runrecords import OK, OUTCOMES, SKIPPED
from pandaserver.web import fleetsqlite
from pandaserver.web.model import FleetSnapshot
from pandaserver.web.queries import read_fleet

SAME_NOW = datetime(2000, 1, 1, tzinfo=UTC)  # the clock is read twice: set aside


def _fill(engine: Engine) -> None:
    rand = random.Random(7)
    with engine.connect() as conn:
        now = db_now(conn)
    rows: list[dict[str, Any]] = []
    for i in range(200):
        script = rand.choice(["a", "b", "c", "zz"])
        outcome = SKIPPED if script == "zz" else rand.choice(OUTCOMES)
        started = now - timedelta(seconds=rand.randrange(0, 5000), microseconds=i)
        rows.append({"script": script, "server": rand.choice(["s1", "s2"]), "pid": i,
                     "generation": rand.choice([None, i]), "due_at": rand.choice([None, started]),
                     "started_at": started, "outcome": outcome,
                     "ended_at": None if outcome == "running" else started + timedelta(
                         seconds=rand.random() * 10),
                     "error": "Traceback\nValueError: x" if outcome != OK else None,
                     "master_id": f"m{i % 3}", "master_pid": 100 + i % 3, "run_id": i})
    beats = HeartbeatStore(engine)
    beats.beat("s1", 11, "1.0", now - timedelta(hours=1), "h1", server_time=now)
    beats.beat("s2", 12, "1.1", now - timedelta(hours=2), "h2")
    ControlStore(engine).poll("s1", 11, 0, [], {"draining": True})  # daemon_server.state
    with engine.begin() as conn:
        conn.execute(insert(daemon_run), rows)
        conn.execute(insert(daemon_lease), {  # held, contended
            "name": "a", "generation": 3, "owner_server": "s1", "owner_pid": 11,
            "acquired_at": now, "expires_at": now + timedelta(seconds=30),
            "next_due": now + timedelta(seconds=600), "period": 600.0, "updated_at": now,
            "contended": 2, "contended_by": "s2", "contended_at": now, "owner_token": "t"})
        conn.execute(insert(daemon_lease), {  # released, overdue, a cron one
            "name": "c", "generation": 1, "next_due": now - timedelta(seconds=5),
            "period": 60, "updated_at": now, "firing": now})
        conn.execute(daemon_run.update().where(daemon_run.c.id == 1).values(
            error=None, outcome=OK))


def _aside(snap: FleetSnapshot) -> FleetSnapshot:
    return dataclasses.replace(
        snap, db_now=SAME_NOW,
        servers=[dataclasses.replace(s, db_now=SAME_NOW) for s in snap.servers],
        leases=[dataclasses.replace(lease, db_now=SAME_NOW) for lease in snap.leases])


def test_fleet_reads_the_same_through_sqlite3_as_through_sqlalchemy(
        tmp_path: Path, fill_migrated: Callable[[URL], None],
        make_engine_for: Callable[[URL], Engine]) -> None:
    path = tmp_path / "fleet.sqlite"
    url = URL.create("sqlite", database=str(path))
    fill_migrated(url)
    engine = make_engine_for(url)
    _fill(engine)
    through_sqlalchemy = read_fleet(engine)
    with opened(path) as conn:
        through_sqlite3 = fleetsqlite.read_fleet(conn)
    assert through_sqlite3.servers[0].state and through_sqlite3.leases and through_sqlite3.last_runs
    assert _aside(through_sqlite3) == _aside(through_sqlalchemy)
    for one, other in ((through_sqlite3.servers, through_sqlalchemy.servers),
                       (through_sqlite3.leases, through_sqlalchemy.leases),
                       (through_sqlite3.last_runs, through_sqlalchemy.last_runs)):
        # the same types field by field (an int for an int, aware datetimes), not only ==
        assert [{k: type(v) for k, v in vars(row).items()} for row in one] == [
            {k: type(v) for k, v in vars(row).items()} for row in other]
    assert through_sqlite3.db_now.tzinfo == UTC
    assert through_sqlite3.db_now >= through_sqlalchemy.db_now  # read after it

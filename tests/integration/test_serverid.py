"""The server's identity and the age of its history, read on real connections of
PostgreSQL and MariaDB (``pandaserver/db/base/serverid.py``): what a master that starts after a
failover learns from the server. (The failover itself: tests/acceptance/test_failover.py.)"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import URL, Engine, select, text

from pandaserver.db.base.serverid import IdentityWatch
from pandaserver.db.base.tables import daemon_db_timeline as timeline


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_each_history_is_recorded_once_on_its_server_and_its_age_read_back(
        db_engine: Engine, db_url: URL, make_engine_for: Callable[[URL], Engine]) -> None:
    def make(seen_by: str) -> IdentityWatch:
        """A master's first connection to the database (its engine's ``connect`` hook)."""
        engine = make_engine_for(db_url)
        watch = IdentityWatch(engine, lambda: 100.0, seen_by)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return watch

    first = make("a pid 1")
    assert first.current is not None and first.current.timeline == 1 and not first.unreadable
    assert first.age is not None and first.age.elapsed == math.inf  # never promoted
    with db_engine.connect() as conn:
        rows = conn.execute(select(timeline)).all()
    assert [(r.system_id, r.timeline, r.seen_by) for r in rows] == \
        [(str(first.current.system_id), 1, "a pid 1")]

    # the fleet's tables also name another server (a promoted replica's copy of them)
    with db_engine.begin() as conn:
        conn.execute(timeline.insert().values(system_id="another", timeline=1, seen_by="old",
                                              first_seen=datetime.now(UTC) - timedelta(days=1)))
    second = make("b pid 2")
    assert second.age is not None and 0.0 <= second.age.elapsed < 60.0  # "a" arrived just now
    # ... and "a" first arrived an hour ago: the old leases are long dead
    with db_engine.begin() as conn:
        conn.execute(timeline.update().where(timeline.c.system_id != "another")
                     .values(first_seen=rows[0].first_seen - timedelta(hours=1)))
    third = make("c pid 3")
    assert third.age is not None and third.age.elapsed >= 3600.0
    with db_engine.connect() as conn:
        assert conn.execute(select(timeline.c.seen_by).order_by(timeline.c.seen_by)) \
            .scalars().all() == ["a pid 1", "old"]  # recorded by the first arrival only

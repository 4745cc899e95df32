"""Server heartbeats, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from pandaserver.db.stores.heartbeat import HeartbeatStore, config_hash

STARTED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_beat_inserts_then_refreshes(db_engine: Engine) -> None:
    store = HeartbeatStore(db_engine)
    store.beat("srv-a", 100, "0.1.0", STARTED, "h1")
    (first,) = store.list_servers()
    assert (first.server, first.pid, first.version, first.config_hash) == ("srv-a", 100,
                                                                           "0.1.0", "h1")
    assert first.started_at == STARTED  # stored as UTC, microseconds kept
    assert 0 <= first.age < 1
    store.beat("srv-a", 101, "0.2.0", STARTED + timedelta(hours=1), "h2")
    (second,) = store.list_servers()
    assert (second.pid, second.version, second.config_hash) == (101, "0.2.0", "h2")
    assert second.last_seen >= first.last_seen


def test_list_servers_sorted_and_forget(db_engine: Engine) -> None:
    store = HeartbeatStore(db_engine)
    for name in ("srv-c", "srv-a", "srv-b"):
        store.beat(name, 1, "v", STARTED, "h")
    assert [s.server for s in store.list_servers()] == ["srv-a", "srv-b", "srv-c"]
    assert store.forget("srv-b") and not store.forget("srv-b")
    assert [s.server for s in store.list_servers()] == ["srv-a", "srv-c"]


def test_times_from_another_zone_are_stored_as_utc(db_engine: Engine) -> None:
    store = HeartbeatStore(db_engine)
    from datetime import timezone

    tokyo = STARTED.astimezone(timezone(timedelta(hours=9)))
    store.beat("srv", 1, "v", tokyo, "h")
    (row,) = store.list_servers()
    assert row.started_at == STARTED and row.started_at.utcoffset() == timedelta(0)
    with pytest.raises(Exception, match="timezone-aware"):
        store.beat("srv", 1, "v", datetime(2026, 1, 1), "h")  # noqa: DTZ001 - the point


def test_config_hash_is_canonical() -> None:
    a = config_hash({"n_proc": 2, "scripts": {"x": {"period": 60, "sync": True}}})
    b = config_hash({"scripts": {"x": {"sync": True, "period": 60}}, "n_proc": 2})
    c = config_hash({"n_proc": 3, "scripts": {"x": {"period": 60, "sync": True}}})
    assert a == b != c
    assert len(a) == 64 and int(a, 16) >= 0

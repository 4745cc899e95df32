"""The fleet page's reads of the history (web/queries.py), which skip through indexes
(db/stores/skipscan.py), give what a plain scan of every row gives; on every backend."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, insert, inspect, select

from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.runrecords import OK, OUTCOMES, SKIPPED
from pandaserver.web.queries import read_fleet, read_runs


def test_last_runs_and_facts_match_a_full_scan(db_engine: Engine) -> None:
    upgrade(db_engine)
    rand = random.Random(13)
    with db_engine.connect() as conn:
        now = db_now(conn)
    rows: list[dict[str, Any]] = []
    for i in range(600):
        script = rand.choice(["a", "b", "b2", "c", "zz"])
        server = rand.choice(["s1", "s2", "s3"])
        outcome = rand.choice(OUTCOMES)
        if script == "zz":
            outcome = SKIPPED  # a script only ever skipped
        if script == "c" and server == "s3":
            outcome = SKIPPED  # a server that only ever lost the lease
        started = now - timedelta(seconds=rand.randrange(0, 5000))
        if i % 50 == 0 and rows:
            started = rows[-1]["started_at"]  # ties: the later id wins
        rows.append({"script": script, "server": server, "pid": i, "started_at": started,
                     "ended_at": None if outcome == "running" else
                     started + timedelta(seconds=rand.random() * 10), "outcome": outcome})
    with db_engine.begin() as conn:
        conn.execute(insert(daemon_run), rows)
        stored = [dict(r._mapping) for r in conn.execute(select(daemon_run)).all()]
    snap = read_fleet(db_engine)
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for row in stored:
        if row["outcome"] == SKIPPED:
            continue
        key = (row["script"], row["server"])
        best = expected.get(key)
        if best is None or (row["started_at"], row["id"]) > (best["started_at"], best["id"]):
            expected[key] = row
    assert {(r.script, r.server): r.id for r in snap.last_runs} == {
        key: row["id"] for key, row in expected.items()}
    assert ("c", "s3") not in {(r.script, r.server) for r in snap.last_runs}
    for script in {row["script"] for row in stored}:
        mine = [row for row in stored if row["script"] == script]
        fact = snap.facts[script]
        assert fact.first_seen == min(row["started_at"] for row in mine)
        ends = [row["ended_at"] for row in mine if row["outcome"] == OK]
        assert fact.last_success == (max(ends) if ends else None)
    assert set(snap.facts) == {"a", "b", "b2", "c", "zz"}
    _, runs = read_runs(db_engine, "b", 20)
    newest = sorted((row for row in stored if row["script"] == "b"),
                    key=lambda row: (row["started_at"], row["id"]), reverse=True)[:20]
    assert [r.id for r in runs] == [row["id"] for row in newest]


def test_the_pair_index_leaves_skipped_attempts_out_where_it_can(db_engine: Engine) -> None:
    """compare_metadata (test_migrations) does not compare a partial index's predicate."""
    upgrade(db_engine)
    found = {ix["name"]: ix for ix in inspect(db_engine).get_indexes("daemon_run")}
    pair = found["ix_daemon_run_script_server_started_at_id"]
    assert pair["column_names"] == ["script", "server", "started_at", "id"]
    where = pair.get("dialect_options", {}).get(f"{db_engine.dialect.name}_where")
    if db_engine.dialect.name == "mysql":
        assert where is None  # no partial indexes there: the whole table
    else:
        assert where is not None and "skipped" in str(where) and "<>" in str(where)

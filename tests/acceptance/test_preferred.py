"""One preferred server asks for each sync lease (daemons/fleet/rank.py): real masters on a real
PostgreSQL, whose triggers log every grant attempt and every grant."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness import MasterProcess, running_master, script_env, wait_for, write_config
from pg import PgCluster, url_text
from sqlalchemy import URL

from pandaserver.daemons.fleet import rank
from pandaserver.daemons.fleet.dbleases import LIVE_BEATS
from pandaserver.db.base.servertime import due_tolerance

PERIOD = 2.0
TTL = 15.0  # LEASE_TTL_MIN
SLACK = 8.0  # generous: a loaded 2-core machine, worker start-up

LOG = """
CREATE TABLE test_attempt (name text, owner text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE test_grant (name text, generation int, owner text, at timestamptz);
CREATE FUNCTION test_attempt() RETURNS trigger AS $$ BEGIN
  INSERT INTO test_attempt (name, owner) VALUES (NEW.name, NEW.owner_server);
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE FUNCTION test_grant() RETURNS trigger AS $$ BEGIN
  IF TG_OP = 'INSERT' OR NEW.generation <> OLD.generation THEN
    INSERT INTO test_grant VALUES (NEW.name, NEW.generation, NEW.owner_server, NEW.acquired_at);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
-- every grant statement is an INSERT ... ON CONFLICT: its BEFORE INSERT trigger fires for
-- each attempt, won or lost
CREATE TRIGGER test_attempt BEFORE INSERT ON daemon_lease
  FOR EACH ROW EXECUTE FUNCTION test_attempt();
CREATE TRIGGER test_grant AFTER INSERT OR UPDATE ON daemon_lease
  FOR EACH ROW EXECUTE FUNCTION test_grant();
"""


def query(cluster: PgCluster, url: URL, sql: str) -> list[tuple[Any, ...]]:
    return cluster.sql(sql, str(url.database))


def fleet(tmp_path: Path, pg_url: URL, pg_cluster: PgCluster, scripts: list[str],
          heartbeat: float) -> Path:
    cfg = write_config(tmp_path, {s: {"module": "record", "period": PERIOD, "sync": True,
                                      "arguments": [0.05]} for s in scripts},
                       db_url=url_text(pg_url), n_proc=2, heartbeat_interval=heartbeat,
                       lease_ttl=TTL)
    upgrade = subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c",
                              str(cfg), "db", "upgrade"], capture_output=True, text=True,
                             timeout=60, env=script_env(tmp_path / "cli.jsonl"),
                             stdin=subprocess.DEVNULL)
    assert upgrade.returncode == 0, upgrade.stderr
    query(pg_cluster, pg_url, LOG)
    return cfg


def start(stack: ExitStack, cfg: Path, tmp_path: Path, names: list[str]
          ) -> dict[str, MasterProcess]:
    masters = {n: stack.enter_context(running_master(cfg, tmp_path, server=n)) for n in names}
    for master in masters.values():  # each sees the two others (then ranks agree)
        master.wait_log(f"fleet: {len(names) - 1} other live server(s)", timeout=60)
    return masters


def grants(cluster: PgCluster, url: URL, name: str, since: float = 0.0
           ) -> list[tuple[float, str]]:
    return [(float(at), str(owner)) for at, owner in query(
        cluster, url, "SELECT extract(epoch FROM at), owner FROM test_grant"
        f" WHERE name = '{name}' AND extract(epoch FROM at) > {since} ORDER BY generation")]


def db_now(cluster: PgCluster, url: URL) -> float:
    return float(query(cluster, url, "SELECT extract(epoch FROM now())")[0][0])


def assert_every_period_once(found: list[tuple[float, str]], what: str) -> None:
    """One grant per period: consecutive grants never closer than the period less the
    tolerance (a grant on time keeps the grid, a late one, a fallback's, counts the period
    from itself: docs/scheduling.md), and never a whole period more apart than that (the
    next due time is at most a period after a grant: a gap of two would be a period
    missed)."""
    floor = PERIOD - due_tolerance(PERIOD)
    for (a, _), (b, _) in pairwise(found):
        assert b - a >= floor, f"{what}: two grants within one period: {found}"
        assert b - a < PERIOD + floor, f"{what}: a period missed between {a} and {b}: {found}"


def test_each_period_is_granted_once_and_asked_for_about_once(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    scripts = ["s1", "s2", "s3", "s4"]
    cfg = fleet(tmp_path, pg_url, pg_cluster, scripts, heartbeat=1)
    with ExitStack() as stack:
        start(stack, cfg, tmp_path, ["a", "b", "c"])
        since = db_now(pg_cluster, pg_url) + PERIOD  # past the first grants of the ranking
        wait_for(lambda: all(len(grants(pg_cluster, pg_url, s, since)) >= 8 for s in scripts),
                 60, "8 grants of every script")
        until = db_now(pg_cluster, pg_url)
    for script in scripts:
        found = [g for g in grants(pg_cluster, pg_url, script, since) if g[0] <= until]
        assert_every_period_once(found, script)
    attempts = query(pg_cluster, pg_url, "SELECT count(*) FROM test_attempt WHERE"
                     f" extract(epoch FROM at) > {since} AND extract(epoch FROM at) <= {until}")
    granted = sum(len([g for g in grants(pg_cluster, pg_url, s, since) if g[0] <= until])
                  for s in scripts)
    # every server asking would be 3 attempts per grant; the preferred one alone, 1
    assert attempts[0][0] < 1.5 * granted, (attempts, granted)


def test_a_killed_preferred_server_is_replaced_without_a_missed_period(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    """The others count the killed master live for LIVE_BEATS heartbeats (60 s here): its
    scripts are taken over by the fallback meanwhile, never two at once."""
    names = ["a", "b", "c"]
    script = next(s for s in (f"s{i}" for i in range(100)) if rank.order(s, names)[0] == "a")
    cfg = fleet(tmp_path, pg_url, pg_cluster, [script], heartbeat=20)
    assert LIVE_BEATS * 20 > TTL + 6 * PERIOD + SLACK  # the fallback does it, not liveness
    with ExitStack() as stack:
        masters = start(stack, cfg, tmp_path, names)
        masters["a"].wait_events(3, "end", script, timeout=60)
        masters["a"].tree()
        killed, killed_at = db_now(pg_cluster, pg_url), time.monotonic()  # the events' clock
        masters["a"].signal(signal.SIGKILL)
        # the lease it held, if any, lives on until it expires: then the others take over
        wait_for(lambda: len(grants(pg_cluster, pg_url, script, killed)) >= 6,
                 TTL + 6 * PERIOD + SLACK, "6 grants after the kill")
        found = grants(pg_cluster, pg_url, script, killed)
        for name in ("b", "c"):
            masters[name].stop()
        runs = []  # (start, end) of every run of the script, on any master
        for master in masters.values():
            begun = None
            for event in master.events(None, script):
                if event["event"] == "start":
                    begun = event["t"]
                elif begun is not None:
                    runs.append((begun, event["t"]))
                    begun = None
            if begun is not None:  # a's run cut by the kill: its tree ends with the master
                runs.append((begun, killed_at + 1.0))
    assert {owner for _, owner in found} <= {"b", "c"}
    assert found[0][0] - killed <= TTL + PERIOD + SLACK, "taken over late"
    assert_every_period_once(found, script)
    runs.sort()
    for (_, end), (begin, _) in pairwise(runs):
        assert begin >= end, "two runs of a sync script at once"

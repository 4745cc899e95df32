"""Lease benchmark: K masters sharing one PostgreSQL, many sync scripts with short periods.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/locks.py                     # K = 1, 4, 16; 20 s each
    .venv/bin/python benchmarks/locks.py --masters 1 4 --seconds 30
    .venv/bin/python benchmarks/locks.py --latency 2000      # one statement's latency

For each K it starts a throwaway PostgreSQL cluster (tests/pg.py, as the tests do), runs K
masters (different --server-name, n_proc 2) over 20 sync scripts and 5 non-sync scripts,
all of period 1 s, and prints:
- lease grants per second (ok runs of sync scripts, from the history table);
- database round trips per grant: the lease statements the server received (counted from
  its statement log), per grant, and the statements of the granted path alone;
- dispatch delay, main() called minus due time, p50/p99, of sync and of non-sync runs
  (from the masters' per-run log lines), the difference being what a lease costs;
- duplicate grants (two in one period of a script's grid, from a log of the grants the
  database keeps by trigger) and overlapping runs of sync scripts (one starting before the
  previous ended, from history): must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import psycopg2

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from pg import PgCluster, url_text  # noqa: E402

DELAY = re.compile(r"panda\.master: (\w+) run \d+ outcome=ok duration=[-0-9.]+s"
                   r" delay=(-?[0-9.]+)s")
SYNC, LOCAL, PERIOD = 20, 5, 1.0


def write_config(directory: Path, db_url: str) -> Path:
    scripts = {f"sync{i:02d}": {"module": "noop", "period": PERIOD, "sync": True}
               for i in range(SYNC)}
    scripts.update({f"local{i:02d}": {"module": "noop", "period": PERIOD}
                    for i in range(LOCAL)})
    body = json.dumps(scripts, indent=4).splitlines()
    text = "\n".join(["[daemon]", "enable = True", "package = benchscripts", "n_proc = 2",
                      f"db_url = {db_url}", "heartbeat_interval = 5",
                      "config = " + body[0], *("    " + line for line in body[1:])])
    path = directory / "panda_server.cfg"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(HERE / "scripts_pkg"), str(REPO),
                                         out.get("PYTHONPATH", "")])
    return out


def admin(cluster: PgCluster, dbname: str, sql: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(**cluster.dsn(dbname))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def count_lease_statements(log: Path, since: int) -> tuple[int, int]:
    """(grant statements, second statements of the losing path) in the server's log.

    A grant statement is the upsert, spelled ``WITH attempt AS (INSERT INTO daemon_lease``
    since refusals are folded into it; the losing path's second statement was a
    ``SELECT daemon_lease.owner_server`` read, now an ``UPDATE daemon_lease SET contended``
    (on PostgreSQL only after a race with the lease's first insert)."""
    with log.open(encoding="utf-8", errors="replace") as handle:
        handle.seek(since)
        text = handle.read()
    upserts = len(re.findall(r"statement: (?:WITH \w+ AS\s+\()?INSERT INTO daemon_lease", text))
    reads = len(re.findall(r"statement: (?:SELECT daemon_lease\.owner_server|UPDATE daemon_lease"
                           r" SET contended=)", text))
    return upserts, reads


GRANT_LOG = """
CREATE TABLE bench_grant (name text, at timestamptz);
CREATE FUNCTION bench_log_grant() RETURNS trigger AS $$ BEGIN
  IF TG_OP = 'INSERT' OR NEW.generation <> OLD.generation THEN
    INSERT INTO bench_grant VALUES (NEW.name, NEW.acquired_at);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_log_grant AFTER INSERT OR UPDATE ON daemon_lease
  FOR EACH ROW EXECUTE FUNCTION bench_log_grant();
"""


def grid_duplicates(cluster: PgCluster, dbname: str, period: float) -> int:
    """Grants in a period of the grid that already had one, from the grants the database
    logged (``GRANT_LOG``, exact, on its clock). The grid of a script is anchored at its
    first grant and counted due to due, so a late grant may be followed by an on-time one
    less than a period later: that is no duplicate; two grants in one period are."""
    rows = admin(cluster, dbname,
                 "SELECT name, CAST(EXTRACT(EPOCH FROM at - min(at) OVER (PARTITION BY name))"
                 " * 1000000 AS BIGINT) FROM bench_grant ORDER BY name, at")
    step = round(period * 1_000_000)
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    for name, since in rows:
        cell = (str(name), int(since) // step)  # type: ignore[call-overload]
        duplicates += cell in seen
        seen.add(cell)
    return duplicates


def bad_runs(cluster: PgCluster, dbname: str) -> tuple[int, float]:
    """(overlaps, smallest start-to-start gap) of sync runs, from history.

    History dates a run on the database clock from the master's monotonic measurements,
    to a few milliseconds: a run starting before the previous one of its script ended
    (less 5 ms) is an overlap.
    """
    rows = admin(cluster, dbname,
                 "SELECT script, extract(epoch from started_at), extract(epoch from ended_at)"
                 " FROM daemon_run WHERE outcome = 'ok' AND script LIKE 'sync%'"
                 " ORDER BY script, started_at")
    by_script: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for script, start, end in rows:
        by_script[str(script)].append((float(start), float(end)))  # type: ignore[arg-type]
    overlaps = 0
    smallest = float("inf")
    for runs in by_script.values():
        for (s0, e0), (s1, _) in pairwise(runs):
            smallest = min(smallest, s1 - s0)
            overlaps += s1 < e0 - 0.005
    return overlaps, smallest


def one(k: int, seconds: float, count_statements: bool = True) -> None:
    cluster = PgCluster()
    cluster.start()
    try:
        url = cluster.create_database("bench")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(Path(tmp), url_text(url))
            subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                            "db", "upgrade"], check=True, env=env(), capture_output=True)
            admin(cluster, "bench", GRANT_LOG)
            if count_statements:  # the server logs every statement (slows it a little)
                admin(cluster, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
                admin(cluster, "postgres", "SELECT pg_reload_conf()")
            mark = cluster.logfile.stat().st_size
            logs = [Path(tmp) / f"m{i}.log" for i in range(k)]
            masters = [subprocess.Popen(
                [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                 "--server-name", f"bench{i}", "run"], stdout=log.open("wb"),
                stderr=subprocess.STDOUT, env={**env(), "PANDA_DAEMON_STATE_DIR": tmp},
                start_new_session=True) for i, log in enumerate(logs)]
            time.sleep(seconds)  # the measurement window itself
            for proc in masters:
                proc.send_signal(signal.SIGTERM)
            for proc in masters:
                proc.wait(60)
            upserts, reads = count_lease_statements(cluster.logfile, mark)
            grants = admin(cluster, "bench", "SELECT count(*) FROM daemon_run WHERE outcome ="
                           " 'ok' AND script LIKE 'sync%'")[0][0]
            overlaps, smallest = bad_runs(cluster, "bench")
            duplicates = grid_duplicates(cluster, "bench", PERIOD)
            delays: dict[str, list[float]] = {"sync": [], "local": []}
            for log in logs:
                seen: set[str] = set()
                for match in DELAY.finditer(log.read_text(errors="replace")):
                    name = match.group(1)
                    if name not in seen:  # a script's first run waits for workers to boot
                        seen.add(name)
                        continue
                    kind = "sync" if name.startswith("sync") else "local"
                    delays[kind].append(float(match.group(2)) * 1000)
    finally:
        cluster.stop()
    assert isinstance(grants, int)
    print(f"K={k} masters, {SYNC} sync + {LOCAL} non-sync scripts of period {PERIOD:g} s,"
          f" {seconds:g} s")
    print(f"  lease grants: {grants} ({grants / seconds:.1f}/s; ideal {SYNC / PERIOD:.0f}/s)")
    if grants and count_statements:
        print(f"  lease statements: {upserts} upserts + {reads} second statements of the losing path ="
              f" {(upserts + reads) / grants:.2f} round trips per grant over the fleet;"
              f" granted path: 1 statement")
    for kind, values in delays.items():
        if values:
            print(f"  dispatch delay ms, {kind}: p50 {statistics.median(values):.2f}"
                  f"  p99 {percentile(values, 99):.2f}  ({len(values)} runs)")
    print(f"  grants in one period of the grid: {duplicates}; overlapping sync runs: {overlaps}"
          f" (smallest start-to-start gap {smallest * 1000:.1f} ms)")


def latency(calls: int) -> None:
    """Statement latency and count of one grant and one refusal, in this process, on a
    throwaway PostgreSQL, with the master's engine settings (autocommit, no pre-ping)."""
    from sqlalchemy import event

    from pandaserver.db.engine import engine_from_url
    from pandaserver.db.leases import LeaseStore
    from pandaserver.db.schema import upgrade

    cluster = PgCluster()
    cluster.start()
    try:
        engine = engine_from_url(cluster.create_database("latency"), autocommit=True,
                                 pre_ping=False)
        upgrade(engine)
        store = LeaseStore(engine)
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
        store.try_acquire("held", "other", 1, period=3600, ttl=3600)
        cases = {  # ttl 0: the lease has expired by the next call, so every call is granted
            "grant": lambda: store.try_acquire("free", "bench", 1, period=0, ttl=0),
            "refusal": lambda: store.try_acquire("held", "bench", 1, period=3600, ttl=3600),
        }
        for what, call in cases.items():
            for _ in range(min(100, calls)):  # warm: connection, statement cache
                call()
            sent.clear()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                result = call()
                times.append((time.perf_counter() - t0) * 1000)
                assert result.granted == (what == "grant")
            print(f"  {what}: median {statistics.median(times):.3f} ms,"
                  f" p99 {percentile(times, 99):.3f} ms, {len(sent) / calls:.2f} statements"
                  f" ({calls} calls)")
        engine.dispose()
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masters", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--no-statement-log", action="store_true",
                        help="do not count statements (the server then logs none, so the"
                             " delays are those of an ordinary server)")
    parser.add_argument("--latency", type=int, metavar="CALLS",
                        help="instead: time CALLS grants and CALLS refusals of one lease"
                             " statement in this process (no masters)")
    args = parser.parse_args()
    if args.latency:
        latency(args.latency)
        return
    for k in args.masters:
        one(k, args.seconds, count_statements=not args.no_statement_log)


if __name__ == "__main__":
    main()

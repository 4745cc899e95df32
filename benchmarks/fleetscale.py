"""The fleet part of benchmarks/scale.py: K masters (n_proc 1 each) on one throwaway
PostgreSQL sharing sync scripts of period 10 s. Grants per second, lease statements per
grant across the fleet (from the server's statement log), duplicate and overlapping runs
(from the history), sync dispatch delay (from the masters' per-run log lines), history rows
written per grant."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg2
from pg import PgCluster, url_text
from scale import env, pct, runs_in, start_master, stop_all, write_config

PERIOD = 10.0


def admin(cluster: PgCluster, dbname: str, sql: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(**cluster.dsn(dbname))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def lease_statements(log: Path, since: int) -> dict[str, int]:
    with log.open(encoding="utf-8", errors="replace") as handle:
        handle.seek(since)
        text = handle.read()
    # the grant (and refusal) statement's text starts "WITH attempt AS \n\t(INSERT ..." in
    # the log; the second statement of a refusal, when there is one, "UPDATE daemon_lease
    # SET contended=" (renewals and releases are the other UPDATEs)
    found = re.findall(r"statement: (WITH \w+ AS\s+\(INSERT INTO daemon_lease|INSERT INTO"
                       r" daemon_lease|SELECT daemon_lease\.owner_server|UPDATE daemon_lease"
                       r"(?: SET contended=)?)", text)
    counts: dict[str, int] = defaultdict(int)
    for what in found:
        kind = ("grant_cte" if what.startswith("WITH") else "upsert" if what.startswith("INSERT")
                else "losing_read" if what.startswith("SELECT")
                else "contended_update" if what.endswith("=") else "update")
        counts[kind] += 1
    return dict(counts)


def fleet_scenario(k: int, count: int, seconds: float) -> dict[str, Any]:
    cluster = PgCluster()
    cluster.start()
    try:
        url = url_text(cluster.create_database("fleet"))
        scripts = {f"sync{i:03d}": {"module": "noop", "period": PERIOD, "sync": True}
                   for i in range(count)}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(Path(tmp), scripts, 1, url, extra=("heartbeat_interval = 30",))
            subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                            "db", "upgrade"], check=True, env=env(), capture_output=True)
            admin(cluster, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
            admin(cluster, "postgres", "SELECT pg_reload_conf()")
            logs = [Path(tmp) / f"m{i}.log" for i in range(k)]
            masters = [start_master(cfg, log, f"fleet{i:02d}", Path(tmp)) for i, log in
                       enumerate(logs)]
            try:
                time.sleep(min(20.0, seconds / 3))  # the start-up: workers boot, first grants
                mark = cluster.logfile.stat().st_size
                first_id = admin(cluster, "fleet", "SELECT coalesce(max(id), 0)"
                                 " FROM daemon_run")[0][0]
                t0 = time.monotonic()
                time.sleep(seconds)
                window = time.monotonic() - t0
                statements = lease_statements(cluster.logfile, mark)
                last_id = admin(cluster, "fleet", "SELECT coalesce(max(id), 0)"
                                " FROM daemon_run")[0][0]
            finally:
                left = stop_all(masters)
            rows = admin(cluster, "fleet",
                         "SELECT script, outcome, extract(epoch from started_at),"
                         " extract(epoch from ended_at) FROM daemon_run"
                         f" WHERE id > {first_id} AND id <= {last_id} ORDER BY script, started_at")
            all_ok = admin(cluster, "fleet",
                           "SELECT script, extract(epoch from started_at),"
                           " extract(epoch from ended_at) FROM daemon_run WHERE outcome = 'ok'"
                           " ORDER BY script, started_at")
            delays = [d * 1000 for log in logs for name, outcome, d, _ in
                      runs_in(log.read_text(errors="replace"))[1:] if outcome == "ok"]
    finally:
        cluster.stop()
    grants = sum(1 for _, outcome, _, _ in rows if outcome == "ok")
    by_script: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for script, start, end in all_ok:
        by_script[script].append((float(start), float(end)))
    duplicates = overlaps = 0
    for runs in by_script.values():
        for (s0, e0), (s1, _) in pairwise(runs):
            duplicates += s1 - s0 < PERIOD / 2
            overlaps += s1 < e0 - 0.005
    total = sum(statements.values())
    return {
        "scenario": "fleet", "masters": k, "sync_scripts": count, "period_s": PERIOD,
        "window_s": round(window, 1), "grants": grants,
        "grants_per_s": round(grants / window, 2), "ideal_per_s": count / PERIOD,
        "lease_statements": statements,
        "statements_per_grant": round(total / grants, 2) if grants else None,
        "history_rows_per_grant": round(len(rows) / grants, 2) if grants else None,
        "duplicates": duplicates, "overlaps": overlaps,
        "sync_delay_ms": {"p50": pct(delays, 50), "p99": pct(delays, 99),
                          "mean": round(statistics.mean(delays), 3) if delays else None},
        "left_behind": left,
    }

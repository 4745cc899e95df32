"""The fleet part of benchmarks/scale.py: K masters (n_proc 1 each) on one throwaway
PostgreSQL sharing sync scripts of period 10 s. Grants per second, lease statements per
grant across the fleet by kind (from the server's statement log), duplicate and overlapping
runs (from the history; grants closer than the period less the tolerance, from a log of
grants the database keeps by trigger), sync dispatch delay of the runs in the window (from
the masters' per-run log lines), history rows written per grant.

``decide_per_grant`` counts what it takes the fleet to decide who runs a period: grant
statements (won or lost), the loser's read and the bulk reads of the lease table that let
the other servers know without asking. ``statements_per_grant`` adds the release (and any
renewal) of each grant: the whole lease path.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pgfleet import bad_runs, pg_fleet
from scale import pct, runs_in, say

PERIOD = 10.0
DECIDE = ("grant", "contended_update", "loser_read", "table_read", "other_lease")


def fleet_scenario(k: int, count: int, seconds: float) -> dict[str, Any]:
    scripts = {f"sync{i:03d}": {"module": "noop", "period": PERIOD, "sync": True}
               for i in range(count)}
    with pg_fleet(k, scripts, 1, extra=("heartbeat_interval = 30",)) as fleet:
        time.sleep(min(20.0, seconds / 3))  # the start-up: workers boot, first grants
        mark = fleet.mark()
        starts = [log.stat().st_size for log in fleet.logs]  # the window's runs only
        first_id = fleet.query("SELECT coalesce(max(id), 0) FROM daemon_run")[0][0]
        t0 = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - t0
        statements = fleet.statements(mark)
        last_id = fleet.query("SELECT coalesce(max(id), 0) FROM daemon_run")[0][0]
        fleet.stop()
        rows = fleet.query("SELECT script, outcome FROM daemon_run"
                           f" WHERE id > {first_id} AND id <= {last_id}")
        all_ok = fleet.query("SELECT script, extract(epoch from started_at),"
                             " extract(epoch from ended_at) FROM daemon_run"
                             " WHERE outcome = 'ok' ORDER BY script, started_at")
        duplicates = fleet.duplicates(PERIOD)
        delays = [d * 1000 for log, start in zip(fleet.logs, starts, strict=True)
                  for name, outcome, d, _ in runs_in(log.read_bytes()[start:].decode(
                      errors="replace")) if outcome == "ok"]
        left = fleet.left
    grants = sum(1 for _, outcome in rows if outcome == "ok")
    overlaps, _ = bad_runs(all_ok)
    total = sum(statements.values())
    decide = sum(statements.get(kind, 0) for kind in DECIDE)
    say(f"  K={k}: {grants} grants, statements {statements}")
    return {
        "scenario": "fleet", "masters": k, "sync_scripts": count, "period_s": PERIOD,
        "window_s": round(window, 1), "grants": grants,
        "grants_per_s": round(grants / window, 2), "ideal_per_s": count / PERIOD,
        "lease_statements": statements,
        "statements_per_grant": round(total / grants, 2) if grants else None,
        "decide_per_grant": round(decide / grants, 2) if grants else None,
        "history_rows_per_grant": round(len(rows) / grants, 2) if grants else None,
        "duplicates": duplicates, "overlaps": overlaps,
        "sync_delay_ms": {"p50": pct(delays, 50), "p99": pct(delays, 99),
                          "mean": round(statistics.mean(delays), 3) if delays else None},
        "left_behind": left,
    }

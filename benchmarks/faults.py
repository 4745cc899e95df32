"""Fault benchmark: what a fleet of 3 masters on one PostgreSQL does when things break.

Usage (prints figures; asserts nothing; stops by itself; about 5 minutes, 3 with --quick):
    .venv/bin/python benchmarks/faults.py                    # 30-s fault windows
    .venv/bin/python benchmarks/faults.py --quick            # 10-s windows, lease_ttl 15 only
    .venv/bin/python benchmarks/faults.py --seconds 60 --only db-hang partition

One JSON object per scenario on stdout (one line each); progress and a human summary on
stderr. Scenarios (each on a fresh database of one throwaway cluster, tests/pg.py):
- db-hang: the postmaster and all its backends are SIGSTOPped for --seconds, then resumed.
  Dispatch delay of a 1-s non-sync script ("tick") on each master during the window, runs
  seen against runs expected, periods missed; a 1-s sync script keeps the database in use.
- partition: master a reaches the database through tests/faultproxy.py, set to "hang"
  (silence, no errors) for --seconds. Same figures, master a being the one cut off.
- partition-overlap: master a holds the lease of a long sync run (the guarded test script)
  and is partitioned until another master takes over: seconds two runs lived at once
  (the last moment the old run's own code ran vs the new run's start) and children of the
  old run alive when the new one started. Both must be 0.
- kill-takeover: kill -9 of the holder master; seconds until another master starts the
  script, with lease_ttl 15 (the minimum) and 30 (the default). Target: under ttl + 5 s.
- lease-cost: healthy database; dispatch delay of sync runs against non-sync runs of the
  same masters over the same window (target: p99 difference under 5 ms).

Dispatch delay is main() called minus due time, both on the system-wide monotonic clock,
as the masters log it for each run (``NAME run N outcome=ok ... delay=...s``). The scripts
record their own start (tests/fixtures/testscripts) only to place each run in the window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dbfaults import frozen, postgres_pids
from faultkit import fleet_of, note
from faultproxy import FaultProxy
from harness import wait_for
from pg import PgCluster

SCENARIOS = ("db-hang", "partition", "partition-overlap", "kill-takeover", "lease-cost")
PERIOD = 1.0
AFTER = 5.0  # seconds watched after a fault heals
TICK = {"module": "record", "period": PERIOD}
SYNC = {"module": "record", "period": PERIOD, "sync": True}
GUARDED = {"module": "guarded", "sync": True, "arguments": [600], "period": PERIOD,
           "timeout": 3600}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def stats_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50) * 1000, 2),
            "p99": round(percentile(values, 99) * 1000, 2), "max": round(max(values) * 1000, 2)}


def window_figures(runs: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """Delays of the runs started in [start, end); periods missed: a gap between consecutive
    starts (the last one before the window and the first after it included) of g seconds
    misses round(g / period) - 1 periods when g > 1.5 periods."""
    inside = [d for t, d in runs if start <= t < end]
    before = [t for t, _ in runs if t < start][-1:]
    after = [t for t, _ in runs if t >= end][:1]
    starts = before + [t for t, _ in runs if start <= t < end] + after
    gaps = [b - a for a, b in pairwise(starts)]
    missed = sum(round(g / PERIOD) - 1 for g in gaps if g > 1.5 * PERIOD)
    return {"delay_ms": stats_ms(inside), "runs_seen": len(inside),
            "runs_expected": round((end - start) / PERIOD, 1), "missed_periods": missed,
            "max_gap_s": round(max(gaps), 3) if gaps else None}


def dispatch_under_fault(cluster: PgCluster, kind: str, seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": kind, "fault_seconds": seconds, "masters": 3,
                              "scripts": "tick (non-sync, period 1 s) + s (sync, period 1 s)"}
    scripts = {"tick": TICK, "s": SYNC}
    with FaultProxy(cluster.port) as proxy, fleet_of(cluster, kind, report) as fleet:
        for server in ("a", "b", "c"):
            url = fleet.url.set(host="127.0.0.1", port=proxy.port) \
                if kind == "partition" and server == "a" else None
            fleet.start(server, fleet.config(server, scripts, url))
        for master in fleet.masters.values():
            master.wait_events(3, "start", "tick", timeout=60)
        wait_for(lambda: sum(len(m.events("start", "s")) for m in fleet.masters.values()) >= 2,
                 60, "sync runs before the fault")
        note(f"{kind}: fault for {seconds:g} s")
        start = time.monotonic()
        if kind == "partition":
            proxy.set_mode("hang")
            try:
                time.sleep(seconds)  # the fault window itself
            finally:
                proxy.set_mode("forward")
        else:
            with frozen(postgres_pids(cluster)):
                time.sleep(seconds)
        end = time.monotonic()

        def sync_after() -> list[float]:
            return sorted(e["t"] for m in fleet.masters.values() for e in m.events("start", "s")
                          if e["t"] >= end)

        try:
            resumed: float | None = wait_for(sync_after, 60, "a sync run after the fault")[0]
        except AssertionError:
            resumed = None
        time.sleep(max(0.0, end + AFTER + 1 - time.monotonic()))
        fleet.stop()  # every run line is written before it is read
        report["per_master"] = {s: window_figures(fleet.runs(s, "tick"), start, end)
                                for s in fleet.masters}
        pooled = [d for s in fleet.masters for t, d in fleet.runs(s, "tick") if start <= t < end]
        report["delay_ms_all_masters"] = stats_ms(pooled)
        report["delay_ms_after_heal"] = stats_ms(
            [d for s in fleet.masters for t, d in fleet.runs(s, "tick") if end <= t < end + AFTER])
        report["sync_runs_in_window"] = {s: len([1 for t, _ in fleet.runs(s, "s")
                                                 if start <= t < end]) for s in fleet.masters}
        if kind == "db-hang":  # under a partition b and c never stopped
            report["sync_resumed_after_s"] = None if resumed is None else round(resumed - end, 2)
    return report


def guarded_evidence(found: list[dict[str, Any]]) -> dict[str, Any]:
    overlaps = [max(0.0, a["last"] - b["t"]) for a, b in pairwise(found)]
    return {"runs": len(found), "servers": [r["server"] for r in found],
            "overlap_s": round(sum(overlaps), 3),
            "children_alive_at_a_start": sum(len(r["overlap"]) for r in found)}


def partition_overlap(cluster: PgCluster, ttl: float) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": "partition-overlap", "lease_ttl": ttl, "masters": 3}
    scripts = {"g": GUARDED}
    with FaultProxy(cluster.port) as proxy, fleet_of(cluster, "overlap", report) as fleet:
        proxied = fleet.url.set(host="127.0.0.1", port=proxy.port)
        a = fleet.start("a", fleet.config("a", scripts, proxied, lease_ttl=ttl))
        a.wait_events(1, "start", "g", timeout=60)
        for server in ("b", "c"):
            fleet.start(server, fleet.config(server, scripts, lease_ttl=ttl))
        for server in ("b", "c"):
            fleet.masters[server].wait_log("database: ", timeout=30)
        time.sleep(1.0)  # b and c ask, and are refused, before the partition
        note(f"partition-overlap: holder a partitioned (lease_ttl {ttl:g} s)")
        cut = time.monotonic()
        proxy.set_mode("hang")
        try:
            taker = fleet.first_start("g", ["b", "c"], ttl + 30)
            with contextlib.suppress(AssertionError):
                a.wait_log(" fenced", timeout=10)
        except AssertionError:
            taker = None
        finally:
            healed = time.monotonic()
            proxy.set_mode("forward")
        time.sleep(AFTER)  # healed: a must not run g again while another server holds it
        found = fleet.guarded_runs("g")
        report.update(guarded_evidence(found))
        old = found[0]
        report["partition_s"] = round(healed - cut, 2)
        report["old_run_last_code_after_cut_s"] = round(old["last"] - cut, 3)
        if taker is not None:
            new = next(r for r in found if r["server"] == taker)
            report["takeover_after_cut_s"] = round(new["t"] - cut, 3)
            report["margin_old_last_to_new_start_s"] = round(new["t"] - old["last"], 3)
        report["holder_logged_fenced"] = " fenced" in a.log()
    return report


def kill_takeover(cluster: PgCluster, ttl: float) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": "kill-takeover", "lease_ttl": ttl, "masters": 3,
                              "target_s": ttl + 5}
    scripts = {"g": GUARDED}
    with fleet_of(cluster, f"kill{int(ttl)}", report) as fleet:
        a = fleet.start("a", fleet.config("a", scripts, lease_ttl=ttl))
        a.wait_events(1, "start", "g", timeout=60)
        for server in ("b", "c"):
            fleet.start(server, fleet.config(server, scripts, lease_ttl=ttl))
        for server in ("b", "c"):
            fleet.masters[server].wait_log("database: ", timeout=30)
        time.sleep(1.0)
        a.tree()  # remembered: cleanup kills (and reports) whatever of a's is left
        note(f"kill-takeover: kill -9 of the holder (lease_ttl {ttl:g} s)")
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        try:
            taker = fleet.first_start("g", ["b", "c"], ttl + 30)
        except AssertionError:
            taker = None
        found = fleet.guarded_runs("g")
        report.update(guarded_evidence(found))
        if taker is not None:
            new = next(r for r in found if r["server"] == taker)
            report["takeover_s"] = round(new["t"] - killed, 3)
            report["within_target"] = new["t"] - killed < ttl + 5
        report["old_run_last_code_after_kill_s"] = round(found[0]["last"] - killed, 3)
    return report


def lease_cost(cluster: PgCluster, seconds: float, count: int) -> dict[str, Any]:
    report: dict[str, Any] = {"scenario": "lease-cost", "seconds": seconds, "masters": count,
                              "scripts": "2 sync + 2 non-sync, period 1 s, n_proc 4"}
    scripts = {"s0": SYNC, "s1": SYNC, "l0": TICK, "l1": TICK}
    with fleet_of(cluster, "cost", report) as fleet:
        for server in "abcdefghij"[:count]:
            fleet.start(server, fleet.config(server, scripts, n_proc=4))
        for master in fleet.masters.values():
            master.wait_events(3, "start", "l0", timeout=60)
        wait_for(lambda: sum(len(m.events("start", "s1")) for m in fleet.masters.values()) >= 2,
                 60, "sync runs")
        note(f"lease-cost: healthy database for {seconds:g} s")
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
        fleet.stop()
        delays: dict[str, list[float]] = {"sync": [], "non_sync": []}
        lease_wait = [q for server in fleet.masters for name in ("s0", "s1")
                      for t, q in fleet.runs(server, name, queued=True) if start <= t < end]
        starts: dict[str, list[float]] = {"s0": [], "s1": []}
        for server in fleet.masters:
            for name in scripts:
                for t, d in fleet.runs(server, name):
                    if start <= t < end:
                        delays["sync" if name.startswith("s") else "non_sync"].append(d)
                        if name in starts:
                            starts[name].append(t)
        sync, local = stats_ms(delays["sync"]), stats_ms(delays["non_sync"])
        report["sync_delay_ms"], report["non_sync_delay_ms"] = sync, local
        report["sync_lease_wait_ms"] = stats_ms(lease_wait)
        if sync["n"] and local["n"]:
            report["added_by_lease_ms"] = {q: round(sync[q] - local[q], 2) for q in ("p50", "p99")}
        report["sync_runs_less_than_half_a_period_apart"] = sum(
            b - a < PERIOD / 2 for ts in starts.values() for a, b in pairwise(sorted(ts)))
    return report


def summary(report: dict[str, Any]) -> str:
    kind = report["scenario"]
    if kind in ("db-hang", "partition"):
        lines = [f"{kind} ({report['fault_seconds']:g} s): tick delay ms / runs seen of expected"
                 " / periods missed, per master:"]
        for server, fig in report.get("per_master", {}).items():
            d = fig["delay_ms"]
            lines.append(f"  {server}: p50 {d.get('p50')} p99 {d.get('p99')} max {d.get('max')}"
                         f"  runs {fig['runs_seen']}/{fig['runs_expected']}"
                         f"  missed {fig['missed_periods']}  max gap {fig['max_gap_s']} s")
        resumed = report.get("sync_resumed_after_s", "n/a")
        lines.append(f"  after heal: {report.get('delay_ms_after_heal')}; sync runs in the"
                     f" window {report.get('sync_runs_in_window')}, fleet-wide sync resumed"
                     f" {resumed} s after heal")
    elif kind == "partition-overlap":
        lines = [f"partition-overlap (ttl {report['lease_ttl']:g}): overlap"
                 f" {report.get('overlap_s')} s, children alive at a start"
                 f" {report.get('children_alive_at_a_start')}, old run's code last ran"
                 f" {report.get('old_run_last_code_after_cut_s')} s after the cut, takeover"
                 f" {report.get('takeover_after_cut_s')} s after the cut"]
    elif kind == "kill-takeover":
        lines = [f"kill-takeover (ttl {report['lease_ttl']:g}): takeover"
                 f" {report.get('takeover_s')} s (target < {report['target_s']:g}),"
                 f" overlap {report.get('overlap_s')} s"]
    else:
        lines = [f"lease-cost ({report['masters']} masters): sync {report.get('sync_delay_ms')},"
                 f" non-sync {report.get('non_sync_delay_ms')}, added"
                 f" {report.get('added_by_lease_ms')}, of which the lease wait"
                 f" {report.get('sync_lease_wait_ms')}"]
    if report.get("left_behind"):
        lines.append(f"  processes left behind (killed): {report['left_behind']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None,
                        help="fault (and lease-cost) window, default 30 (10 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="10-s windows, takeover with lease_ttl 15 only")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--cost-masters", type=int, default=3, choices=range(1, 11),
                        metavar="1..10", help="masters of the lease-cost scenario (default 3)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else 10.0 if args.quick else 30.0

    def stop(signum: int, _frame: object) -> None:  # finally blocks clean up
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    cluster = PgCluster()
    cluster.start()
    reports = []
    try:
        plan: list[tuple[str, Any]] = []
        for kind in args.only:
            if kind in ("db-hang", "partition"):
                plan.append((kind, lambda k=kind: dispatch_under_fault(cluster, k, seconds)))
            elif kind == "partition-overlap":
                plan.append((kind, lambda: partition_overlap(cluster, 15.0)))
            elif kind == "kill-takeover":
                for ttl in (15.0,) if args.quick else (15.0, 30.0):
                    plan.append((kind, lambda t=ttl: kill_takeover(cluster, t)))
            else:
                plan.append((kind, lambda: lease_cost(cluster, seconds, args.cost_masters)))
        for kind, run in plan:
            began = time.monotonic()
            try:
                report = run()
            except Exception as exc:  # a scenario that cannot finish says why; the rest run
                report = {"scenario": kind, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            report["elapsed_s"] = round(time.monotonic() - began, 1)
            print(json.dumps(report), flush=True)
            reports.append(report)
    finally:
        cluster.stop()
    note("\n--- summary ---")
    for report in reports:
        note(summary(report) if "error" not in report else
             f"{report['scenario']}: did not finish: {report['error'][:300]}")


if __name__ == "__main__":
    main()

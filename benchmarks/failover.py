"""Failover benchmark: a real primary and an asynchronous standby, two masters on a URL listing
both; the primary is SIGKILLed mid-run and the standby promoted 2 s later.

Usage (prints figures; asserts nothing; about 45 s a repetition):
    .venv/bin/python benchmarks/failover.py                    # 3 repetitions of each mode
    .venv/bin/python benchmarks/failover.py --repeat 1 --modes lagging

Modes: ``lagging`` cuts the replication stream (tests/faultproxy.py, "hang") before the masters
start, so the promoted standby lacks every grant, heartbeat and history row they wrote (the
worst an asynchronous standby can lose); ``streaming`` leaves it flowing until the kill (the
standby lacks at most what was in flight). Each master runs ``g`` (sync, the guarded test
script, one long run at a time) and ``tick`` (non-sync, period 1 s, the record script).

One JSON object per repetition on stdout; a summary (medians) on stderr. Figures:
``overlap_s`` (seconds two runs of g lived at once; must be 0) and ``overlap_children``
(children of an earlier run alive at a start; must be 0); ``no_sync_s`` (promotion to the
first start of g after it: the time without any sync run); ``tick_max_gap_s`` (the longest
gap between consecutive tick starts on any master from 2 s before the kill to 5 s after the
takeover; the period is 1 s); ``rows_lost`` (runs the scripts recorded with no final history
row on the new primary after the masters stopped) and ``rows_doubled`` (runs with more than
one row); ``resent`` (history writes re-sent after the failover, from the masters' logs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from faultproxy import FaultProxy  # noqa: E402
from harness import MasterProcess, script_env, wait_for, write_config  # noqa: E402
from pg import PgCluster  # noqa: E402
from pgstandby import PgStandby  # noqa: E402

TTL = 15
RESENT = re.compile(r"history: re-sending the (\d+) write")
SCRIPTS = {
    "g": {"module": "guarded", "sync": True, "arguments": [600], "period": 1,
          "timeout": 3600},
    "tick": {"module": "record", "period": 1},
}


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def starts(masters: dict[str, MasterProcess], workdir: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for server, master in masters.items():
        for start in master.events("start", name):
            tick = workdir / f"{name}-alive" / str(start.get("key"))
            last = float(tick.read_text()) if tick.exists() else start["t"]
            found.append({**start, "server": server, "last": max(last, start["t"])})
    return sorted(found, key=lambda r: r["t"])


def one(mode: str) -> dict[str, Any]:
    report: dict[str, Any] = {"mode": mode, "lease_ttl": TTL}
    workdir = Path(tempfile.mkdtemp(prefix="panda-failover-"))
    primary = PgCluster()
    standby: PgStandby | None = None
    masters: dict[str, MasterProcess] = {}
    try:
        primary.start()
        proxy = FaultProxy(primary.port)
        primary.create_database("fleet")
        standby = PgStandby(primary, via_port=proxy.port)
        standby.start()
        hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        cfg = write_config(workdir, SCRIPTS, heartbeat_interval=1, lease_ttl=TTL,
                           db_url=f"postgresql+psycopg2://{primary.superuser}:"
                                  f"{primary.password}@{hosts}/fleet"
                                  "?target_session_attrs=read-write")
        subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                        "db", "upgrade"], check=True, capture_output=True, timeout=120,
                       env=script_env(workdir / "cli.jsonl"))
        standby.caught_up()
        if mode == "lagging":
            proxy.set_mode("hang")
        for server in ("a", "b"):
            masters[server] = MasterProcess(cfg, workdir, server=server, log_level="INFO")
        wait_for(lambda: starts(masters, workdir, "g"), 60, "a first run of g")
        time.sleep(3)  # some ticks and history before the crash
        killed = time.monotonic()
        standby.kill_primary()
        time.sleep(2)
        standby.promote()
        promoted = time.monotonic()
        taken = wait_for(lambda: [r for r in starts(masters, workdir, "g") if r["t"] > promoted],
                         4 * TTL, "a run of g after the promotion")[0]
        time.sleep(5)
        runs = starts(masters, workdir, "g")
        report["no_sync_s"] = round(taken["t"] - promoted, 2)
        report["overlap_s"] = round(max([0.0] + [e["last"] - later["t"]
                                                 for e, later in pairwise(runs)]), 3)
        report["overlap_children"] = sum(len(r["overlap"]) for r in runs)
        gaps = []
        for master in masters.values():
            ticks = sorted(e["t"] for e in master.events("start", "tick")
                           if killed - 2 <= e["t"] <= taken["t"] + 5)
            gaps += [b - a for a, b in pairwise(ticks)]
        report["tick_max_gap_s"] = round(max(gaps), 2) if gaps else None
        for master in masters.values():
            master.signal(signal.SIGTERM)
        for master in masters.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                master.proc.wait(40)
        rows = standby.sql("SELECT server, run_id, outcome FROM daemon_run", "fleet")
        counts: dict[tuple[str, int], list[str]] = {}
        for server, run_id, outcome in rows:
            counts.setdefault((server, run_id), []).append(outcome)
        recorded = [(server, e["run"]) for server, m in masters.items()
                    for e in m.events("start") if e.get("run") is not None]
        report["runs"] = len(recorded)
        report["rows_lost"] = sum(1 for key in recorded
                                  if counts.get(key, ["running"])[-1] == "running")
        report["rows_doubled"] = sum(1 for found in counts.values() if len(found) > 1)
        report["resent"] = sum(int(n) for m in masters.values()
                               for n in RESENT.findall(m.log()))
        report["noticed"] = sum("database failover noticed" in m.log()
                                for m in masters.values())
    finally:
        for master in masters.values():
            if master.proc.poll() is None:
                master.signal(signal.SIGKILL)
            report.setdefault("left_behind", []).extend(master.cleanup())
        for registry in workdir.glob("*.pids"):
            for pid in map(int, registry.read_text().split()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if standby is not None:
            standby.stop()
        primary.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=("lagging", "streaming"),
                        default=["lagging", "streaming"])
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in args.modes:
        for i in range(args.repeat):
            note(f"{mode} {i + 1}/{args.repeat} ...")
            try:
                report = one(mode)
            except Exception as exc:  # one repetition failing does not stop the others
                report = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(report), flush=True)
            results.setdefault(mode, []).append(report)
    for mode, reports in results.items():
        good = [r for r in reports if "error" not in r]
        if not good:
            note(f"{mode}: no repetition finished")
            continue
        figures = {key: statistics.median(r[key] for r in good if r.get(key) is not None)
                   for key in ("no_sync_s", "tick_max_gap_s")}
        note(f"{mode} ({len(good)} runs): overlap max {max(r['overlap_s'] for r in good)} s,"
             f" children {sum(r['overlap_children'] for r in good)}; no sync run after the"
             f" promotion: median {figures['no_sync_s']} s (max"
             f" {max(r['no_sync_s'] for r in good)}); tick max gap median"
             f" {figures['tick_max_gap_s']} s; history rows lost"
             f" {sum(r['rows_lost'] for r in good)}, doubled"
             f" {sum(r['rows_doubled'] for r in good)} (of {sum(r['runs'] for r in good)} runs);"
             f" re-sent {sum(r['resent'] for r in good)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

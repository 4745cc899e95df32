"""Scale benchmark: many scripts on one master, many masters on one database, drift, soak.

Usage (prints figures; asserts nothing; every scenario bounded in time, stopping by itself):
    .venv/bin/python benchmarks/scale.py                          # master, drift, fleet
    .venv/bin/python benchmarks/scale.py --only master --sizes 20 200 2000 --seconds 60
    .venv/bin/python benchmarks/scale.py --only drift --seconds 120
    .venv/bin/python benchmarks/scale.py --only fleet --masters 16 --seconds 60
    .venv/bin/python benchmarks/scale.py --only soak --seconds 300

Stdout: one JSON object per scenario (one line each); stderr: progress. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

RUN_LINE = re.compile(r"panda\.master: (\S+) run \d+ outcome=(\w+) duration=[-0-9.]+s"
                      r" delay=(-?[0-9.]+)s queued=(-?[0-9.]+)s")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(HERE / "scripts_pkg"), str(REPO),
                                         out.get("PYTHONPATH", "")])
    out.update(extra)
    return out


def write_config(directory: Path, scripts: dict[str, dict[str, Any]], n_proc: int,
                 db_url: str | None = None, extra: tuple[str, ...] = ()) -> Path:
    body = json.dumps(scripts, indent=1).splitlines()
    lines = ["[daemon]", "enable = True", "package = benchscripts", f"n_proc = {n_proc}",
             *extra]
    if db_url is not None:
        lines.append(f"db_url = {db_url}")
    lines += ["config = " + body[0], *("    " + line for line in body[1:])]
    path = directory / "panda_server.cfg"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def spread_periods(count: int, low: float = 10.0, high: float = 3600.0) -> list[float]:
    """``count`` periods spread evenly on a log scale between ``low`` and ``high``."""
    if count == 1:
        return [low]
    return [round(low * (high / low) ** (i / (count - 1)), 3) for i in range(count)]


def start_master(cfg: Path, log: Path, name: str, state_dir: Path,
                 **extra_env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
         "--server-name", name, "run"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env=env(PANDA_DAEMON_STATE_DIR=str(state_dir), **extra_env), start_new_session=True)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM, then SIGKILL of the group after 60 s; the pids found alive at the end."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    left = []
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            left.append(proc.pid)
    return left


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


def rss_mb(proc: psutil.Process) -> float:
    try:
        return float(proc.memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))], 3)


def runs_in(text: str) -> list[tuple[str, str, float, float]]:
    return [(m.group(1), m.group(2), float(m.group(3)), float(m.group(4)))
            for m in RUN_LINE.finditer(text)]


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    say(f"  (gave up waiting for {what} after {timeout:g} s)")
    return False


# ----- one master, many scripts -------------------------------------------------------------
def master_scenario(count: int, seconds: float, n_proc: int = 8) -> dict[str, Any]:
    """``count`` no-op scripts of periods spread from 10 s to 3,600 s on ``n_proc`` workers:
    after the start-up runs, master CPU per dispatch, dispatch delay, master RSS."""
    scripts = {f"s{i:04d}": {"module": "noop", "period": p}
               for i, p in enumerate(spread_periods(count))}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), scripts, n_proc)
        log = Path(tmp) / "master.log"
        proc = start_master(cfg, log, "scale", Path(tmp))
        try:
            wait_until("the start-up runs", lambda: len(runs_in(log.read_text())) >= count,
                       max(60.0, count / 10))
            time.sleep(1.0)
            master = psutil.Process(proc.pid)
            before_cpu, before_runs = cpu(master), len(runs_in(log.read_text()))
            before_rss = rss_mb(master)
            time.sleep(seconds)  # the measurement window
            used = cpu(master) - before_cpu
            rows = runs_in(log.read_text())
            after_rss = rss_mb(master)
            workers = [rss_mb(p) for p in tree(proc.pid)[1:]]
        finally:
            left = stop_all([proc])
    window = rows[before_runs:]
    delays = [d * 1000 for _, outcome, d, _ in window if outcome == "ok"]
    return {
        "scenario": "master", "scripts": count, "n_proc": n_proc, "window_s": seconds,
        "dispatches": len(window), "dispatches_per_s": round(len(window) / seconds, 2),
        "master_cpu_ms": round(used * 1000, 1),
        "master_cpu_ms_per_dispatch": round(used * 1000 / len(window), 3) if window else None,
        "master_cpu_pct": round(100 * used / seconds, 3),
        "delay_ms": {"p50": pct(delays, 50), "p99": pct(delays, 99),
                     "max": round(max(delays), 3) if delays else None},
        "early": sum(1 for d in delays if d < 0),
        "master_rss_mb": {"start": round(before_rss, 1), "end": round(after_rss, 1)},
        "worker_rss_mb": round(statistics.mean(workers), 1) if workers else None,
        "left_behind": left,
    }


# ----- drift, as the script sees it ---------------------------------------------------------
def drift_scenario(seconds: float, count: int = 20, period: float = 5.0, n_proc: int = 4,
                   use_db: bool = True) -> dict[str, Any]:
    """``count`` probe scripts of ``period`` on ``n_proc`` workers (history on PostgreSQL):
    each writes its own start times. Mean interval between starts, and each start's delay
    from the grid anchored on the script's first start."""
    cluster = None
    db_url = None
    if use_db:
        from pg import PgCluster, url_text
        cluster = PgCluster()
        cluster.start()
        db_url = url_text(cluster.create_database("drift"))
    try:
        scripts = {f"p{i:02d}": {"module": "probe", "period": period} for i in range(count)}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(Path(tmp), scripts, n_proc, db_url)
            probe = Path(tmp) / "probe.txt"
            log = Path(tmp) / "master.log"
            if db_url is not None:
                subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c",
                                str(cfg), "db", "upgrade"], check=True, env=env(),
                               capture_output=True)
            proc = start_master(cfg, log, "drift", Path(tmp), PANDA_BENCH_PROBE=str(probe))
            try:
                time.sleep(seconds)
            finally:
                left = stop_all([proc])
            starts: dict[str, list[float]] = defaultdict(list)
            for line in probe.read_text().splitlines():
                name, _, at = line.partition(" ")
                starts[name].append(float(at))
            master_delays = []
            seen: set[str] = set()
            for name, outcome, d, _ in runs_in(log.read_text()):
                if name in seen and outcome == "ok":  # first runs wait for workers to boot
                    master_delays.append(d * 1000)
                seen.add(name)
    finally:
        if cluster is not None:
            cluster.stop()
    intervals: list[float] = []
    lateness: list[float] = []
    for times in starts.values():
        intervals += [b - a for a, b in pairwise(times)]
        first = times[0]
        for t in times[1:]:
            k = round((t - first) / period)
            lateness.append((t - (first + k * period)) * 1000)
    mean = statistics.mean(intervals) if intervals else math.nan
    return {
        "scenario": "drift", "scripts": count, "period_s": period, "n_proc": n_proc,
        "history": "postgresql" if use_db else "none", "window_s": seconds,
        "starts": sum(len(t) for t in starts.values()),
        "mean_interval_s": round(mean, 6),
        "mean_interval_error_ms": round((mean - period) * 1000, 3),
        "loss_per_day_s": round((mean - period) / period * 86400, 2),
        "delay_from_grid_ms": {"p50": pct(lateness, 50), "p99": pct(lateness, 99),
                               "max": round(max(lateness), 3) if lateness else None},
        "master_delay_ms": {"p50": pct(master_delays, 50), "p99": pct(master_delays, 99)},
        "left_behind": left,
    }


# ----- a long(ish) run: memory ----------------------------------------------------------------
def soak_scenario(seconds: float, count: int = 200, n_proc: int = 8) -> dict[str, Any]:
    """``count`` no-op scripts of periods spread from 1 s to 60 s (so many runs pass) for
    ``seconds``: RSS of the master and of each worker that lived through the window."""
    scripts = {f"s{i:04d}": {"module": "noop", "period": p}
               for i, p in enumerate(spread_periods(count, 1.0, 60.0))}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), scripts, n_proc)  # proc_lifetime 8 h: no recycling
        log = Path(tmp) / "master.log"
        proc = start_master(cfg, log, "soak", Path(tmp))
        try:
            wait_until("the start-up runs", lambda: len(runs_in(log.read_text())) >= count, 120)
            time.sleep(5.0)
            start_tree = tree(proc.pid)
            start = {p.pid: rss_mb(p) for p in start_tree}
            samples = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                time.sleep(min(30.0, seconds / 10))
                samples.append((round(time.monotonic() - t0), round(rss_mb(start_tree[0]), 2)))
            end = {p.pid: rss_mb(p) for p in tree(proc.pid)}
            runs = len(runs_in(log.read_text()))
        finally:
            left = stop_all([proc])
    master_pid = start_tree[0].pid
    kept = [pid for pid in start if pid in end and pid != master_pid]
    return {
        "scenario": "soak", "scripts": count, "n_proc": n_proc, "window_s": seconds,
        "runs": runs,
        "master_rss_mb": {"start": round(start[master_pid], 2),
                          "end": round(end.get(master_pid, math.nan), 2),
                          "growth_pct": round(100 * (end.get(master_pid, math.nan)
                                                     / start[master_pid] - 1), 2)},
        "master_rss_samples": samples,
        "workers_rss_mb": {"start": round(sum(start[p] for p in kept), 2),
                           "end": round(sum(end[p] for p in kept), 2),
                           "growth_pct": round(100 * (sum(end[p] for p in kept)
                                                      / sum(start[p] for p in kept) - 1), 2)
                           if kept else None,
                           "workers_kept": len(kept)},
        "left_behind": left,
    }


def main() -> None:
    from fleetscale import fleet_scenario  # PostgreSQL-only part, in its own module

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=["master", "drift", "fleet"],
                        choices=["master", "drift", "fleet", "soak"])
    parser.add_argument("--seconds", type=float, default=None,
                        help="window of each scenario (default: master 60, drift 120,"
                             " fleet 60, soak 300)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 2000])
    parser.add_argument("--masters", type=int, default=16)
    parser.add_argument("--sync-scripts", type=int, default=200)
    parser.add_argument("--no-db", action="store_true", help="drift without history")
    args = parser.parse_args()
    for scenario in args.only:
        try:
            if scenario == "master":
                for size in args.sizes:
                    say(f"master: {size} scripts")
                    result = master_scenario(size, args.seconds or 60)
                    print(json.dumps(result), flush=True)
                continue
            say(scenario)
            if scenario == "drift":
                result = drift_scenario(args.seconds or 120, use_db=not args.no_db)
            elif scenario == "fleet":
                result = fleet_scenario(args.masters, args.sync_scripts, args.seconds or 60)
            else:
                result = soak_scenario(args.seconds or 300)
        except Exception as exc:  # one scenario's failure does not stop the others
            result = {"scenario": scenario, "error": repr(exc)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()

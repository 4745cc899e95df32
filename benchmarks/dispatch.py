"""Dispatch benchmark: how late scripts start, how many runs per second, idle cost, memory.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/dispatch.py                 # both scenarios below
    .venv/bin/python benchmarks/dispatch.py --busy-seconds 60 --idle-seconds 60

Busy scenario: 50 scripts of period 1 s, n_proc 4, for 60 s. Dispatch delay is the time the
worker called main() minus the due time (both on the system-wide monotonic clock), taken from
the master's per-run log lines; a negative value would be a run started early.
Idle scenario: 20 scripts of period 600 s, n_proc 4: after the start-up runs, the CPU time
used by the master and its idle workers over the window, as a share of one core; and the
resident memory of the master plus its workers.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from benchmaster import start_master, write_config

from pandaserver.daemons.base.lifeline import KILL_GRACE

DELAY = re.compile(r" run \d+ outcome=(\w+) duration=[-0-9.]+s delay=(-?[0-9.]+)s"
                   r" queued=(-?[0-9.]+)s")


def scripts(count: int, period: float) -> dict[str, dict[str, Any]]:
    return {f"s{i:03d}": {"module": "noop", "period": period} for i in range(count)}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def busy(seconds: float, count: int, period: float, n_proc: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), scripts(count, period), n_proc)
        log = Path(tmp) / "master.log"
        proc = start_master(cfg, log, Path(tmp) / "state")
        time.sleep(seconds)  # the measurement window itself
        stop(proc)
        rows = [(m.group(1), float(m.group(2)), float(m.group(3)))
                for m in DELAY.finditer(log.read_text())]
    delays = [d * 1000 for outcome, d, _ in rows if outcome == "ok"]
    overheads = [(d - q) * 1000 for outcome, d, q in rows if outcome == "ok"][count:]
    # the start-up runs wait for the workers to boot: report them apart
    steady = delays[count:]
    print(f"busy: {count} scripts, period {period:g} s, n_proc {n_proc}, {seconds:g} s")
    print(f"  runs: {len(rows)} ({len(rows) / seconds:.1f}/s), not ok: "
          f"{sum(1 for o, _, _ in rows if o != 'ok')}")
    if steady:
        print(f"  dispatch delay ms (steady state, {len(steady)} runs): "
              f"p50 {statistics.median(steady):.2f}  p99 {percentile(steady, 99):.2f}  "
              f"max {max(steady):.2f}  min {min(steady):.2f}")
        print(f"  of which hand-over to a free worker (delay minus time queued for one): "
              f"p50 {statistics.median(overheads):.2f}  p99 {percentile(overheads, 99):.2f}")
    print(f"  runs started early: {sum(1 for d in delays if d < 0)}")


def idle(seconds: float, count: int, period: float, n_proc: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), scripts(count, period), n_proc)
        proc = start_master(cfg, Path(tmp) / "master.log", Path(tmp) / "state")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tree(proc.pid)) < n_proc + 1:
            time.sleep(0.1)
        time.sleep(3)  # let the start-up runs finish before the window opens
        procs = tree(proc.pid)
        before = cpu_seconds(procs)
        time.sleep(seconds)
        used = cpu_seconds(procs) - before
        rss = sum(p.memory_info().rss for p in procs) / 2**20
        stop(proc)
    print(f"idle: {count} scripts, period {period:g} s, n_proc {n_proc}, {seconds:g} s window")
    print(f"  CPU of master + {len(procs) - 1} workers: {used * 1000:.1f} ms = "
          f"{100 * used / seconds:.4f}% of one core")
    print(f"  RSS of master + workers: {rss:.1f} MB")


def probe_starts(path: Path, count: int, timeout: float = 60) -> list[tuple[str, float, int]]:
    """The first ``count`` starts the probe scripts wrote: (argument, monotonic time, pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().split("\n") if path.exists() else []
        starts = [(words[0], float(words[1]), int(words[2]) if len(words) > 2 else 0)
                  for words in (line.split() for line in lines if line)]
        if len(starts) >= count:
            return starts[:count]
        time.sleep(0.002)
    raise TimeoutError(f"the probe scripts did not start {count} time(s) in {timeout:g} s")


def death_of(pid: int, timeout: float = 30) -> float:
    """The monotonic time process ``pid`` (not our child) ended, to a millisecond or so."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"pid {pid} did not end in {timeout:g} s")
        return time.monotonic()
    finally:
        os.close(fd)


def timeout_kill(rounds: int, n_proc: int) -> None:
    """A script that hangs past its timeout (ignoring SIGTERM) with its next run due: from
    the SIGKILL that ends the hung run to main() of the next run, on the other, idle worker."""
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.txt"
        cfg = write_config(Path(tmp), {"hang": {"module": "hang", "period": 0.5,
                                                "timeout": 0.5, "arguments": ["hang"]}},
                           n_proc)
        os.environ["PANDA_BENCH_PROBE"] = str(probe)
        proc = start_master(cfg, Path(tmp) / "master.log", Path(tmp) / "state")
        try:
            for count in range(1, rounds + 1):
                _, _, pid = probe_starts(probe, count)[-1]
                died = death_of(pid)
                gaps.append(probe_starts(probe, count + 1)[-1][1] - died)
        finally:
            stop(proc)
    print(f"timeout kill: {rounds} runs hung past their timeout (0.5 s; SIGTERM ignored,"
          f" SIGKILL {KILL_GRACE:g} s later), n_proc {n_proc}")
    print(f"  SIGKILL of the hung run to main() of its next run, ms: median"
          f" {statistics.median(gaps) * 1000:.1f}  min {min(gaps) * 1000:.1f}"
          f"  max {max(gaps) * 1000:.1f}")


def first_run(launches: int, n_proc: int) -> None:
    """From the exec of a master to main() of the first run of a script due at start: the
    first launch makes the SQLite file (and migrates it), the others find it made. Also the
    master's CPU time when the run is seen to start (less noisy than wall time under load)."""
    delays, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.txt"
        cfg = write_config(Path(tmp), {"first": {"module": "probe", "period": 600,
                                                 "arguments": ["first"]}}, n_proc)
        os.environ["PANDA_BENCH_PROBE"] = str(probe)
        for _ in range(launches):
            probe.unlink(missing_ok=True)
            launched = time.monotonic()
            proc = start_master(cfg, Path(tmp) / "master.log", Path(tmp) / "state")
            try:
                delays.append(probe_starts(probe, 1)[0][1] - launched)
                cpus.append(cpu_seconds([psutil.Process(proc.pid)]))
            finally:
                stop(proc)
    load = os.getloadavg()
    print(f"first run after launch: {launches} launches, n_proc {n_proc}, SQLite, load average"
          f" {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  exec of the master to main() of the first run, ms: first launch (makes the"
          f" database) {delays[0] * 1000:.0f}")
    if len(delays) > 1:
        again, cpu = delays[1:], cpus[1:]
        print(f"  later launches: median {statistics.median(again) * 1000:.0f}"
              f"  min {min(again) * 1000:.0f}  max {max(again) * 1000:.0f}")
        print(f"  the master's CPU time by then, ms: median {statistics.median(cpu) * 1000:.0f}"
              f"  min {min(cpu) * 1000:.0f}  max {max(cpu) * 1000:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy-seconds", type=float, default=60)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--launches", type=int, default=7,
                        help="masters launched for the first-run figure (0: skip it)")
    parser.add_argument("--timeouts", type=int, default=5,
                        help="hung runs killed for the timeout figure (0: skip it)")
    args = parser.parse_args()
    if args.launches > 0:
        first_run(args.launches, 4)
    if args.timeouts > 0:
        timeout_kill(args.timeouts, 2)
    if args.busy_seconds > 0:
        busy(args.busy_seconds, 50, 1.0, 4)
    if args.idle_seconds > 0:
        idle(args.idle_seconds, 20, 600.0, 4)


if __name__ == "__main__":
    main()

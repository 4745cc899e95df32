"""What the containment walk costs: a scan of /proc, a run's end, a SIGCHLD, a marker search.

Starts ``--extra`` idle processes (so the machine has a few hundred), and a fake master
setting (this process as the master, one child as a worker with ``--children`` children of
its own) and times, over ``--rounds`` rounds: ``proctable.scan()``, ``run_processes`` of a
run (what a run's end and every check of a pending clean-up do), ``reap`` (what a SIGCHLD
does) and ``find_marked`` (what ``stop`` and a dead master's worker do: reads every
process's environment). Prints medians and maxima in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.containment import proctable
from pandaserver.daemons.containment.tracker import MASTER_VAR, RUN_VAR, Containment, find_marked


def timed(what: Callable[[], object], rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        what()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=int, default=250, help="idle processes to add")
    parser.add_argument("--children", type=int, default=20, help="children of the run")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    containment = Containment()
    containment.identity = proctable.identity_of(os.getpid()) or ""
    env = {**os.environ, MASTER_VAR: containment.identity, RUN_VAR: "1:bench"}
    idle = [subprocess.Popen(["sleep", "600"]) for _ in range(args.extra)]
    code = (f"import subprocess, time; ps = [subprocess.Popen(['sleep', '600'])"
            f" for _ in range({args.children})]; time.sleep(600)")
    worker = subprocess.Popen([sys.executable, "-c", code], env=env)
    containment.worker_started(1, worker.pid)
    run = Run(id=1, script="bench", worker=1, pid=worker.pid, due=0.0,
              dispatched=time.monotonic(), timeout_at=0.0)
    try:
        deadline = time.monotonic() + 30
        while len(containment.run_processes(run)) < args.children:
            if time.monotonic() > deadline:
                raise SystemExit("the run's children did not start")
            time.sleep(0.05)
        total = len(proctable.scan())
        print(f"{total} processes on the machine, {args.children} in the run")
        for name, what in (("scan", proctable.scan),
                           ("run_processes (a run's end)", lambda: containment.run_processes(run)),
                           ("reap (a SIGCHLD)", containment._reap_now),
                           ("find_marked (stop)", lambda: find_marked(containment.identity))):
            median, worst = timed(what, args.rounds)
            print(f"{name:30s} median {median:6.1f} ms   max {worst:6.1f} ms")
    finally:
        proctable.kill(containment.run_processes(run))
        for proc in [worker, *idle]:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()

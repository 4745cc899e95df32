"""History journal micro-benchmark: what keeping a run's start and end in the journal costs
per run.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/journal.py                  # 20000 runs
    .venv/bin/python benchmarks/journal.py --runs 50000

For each run, as the master does it: ``Journal.append`` of its start (encode one line, one
``write``), then ``Journal.written`` once the database confirms it (one ``ftruncate`` of the
then empty file); the same for its end. Prints the median, p99 and max of each call in
microseconds, on a journal in a temporary directory of the state directory's file system
(``--dir``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pandaserver.daemons.fleet.history.journal import Journal
from pandaserver.db.stores.history import RunRecord, RunStart


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--dir", default=None, help="where the journal goes (default: /tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        journal = Journal(Path(tmp) / "history-journal-bench.jsonl", time.monotonic)
        appends: list[float] = []
        ends: list[float] = []
        confirms: list[float] = []
        for run_id in range(1, args.runs + 1):
            item = RunStart(script=f"script_{run_id % 50}", server="bench", master_id="m" * 32,
                            master_pid=4242, run_id=run_id, pid=5000 + run_id % 4,
                            generation=None, due_before_start=0.001)
            end = RunRecord(script=item.script, server="bench", pid=item.pid, outcome="ok",
                            duration=0.5, due_before_start=0.001, master_id=item.master_id,
                            master_pid=4242, run_id=run_id)
            for write, calls in ((item, appends), (end, ends)):
                t0 = time.perf_counter()
                journal.append(time.monotonic(), write)
                t1 = time.perf_counter()
                journal.written([write])
                t2 = time.perf_counter()
                calls.append((t1 - t0) * 1e6)
                confirms.append((t2 - t1) * 1e6)
        journal.close()
    for name, values in (("append (start)", appends), ("append (end)", ends),
                         ("written + truncate", confirms)):
        print(f"{name:20s} median {statistics.median(values):7.1f} us  p99"
              f" {pct(values, 0.99):7.1f} us  max {max(values):8.1f} us  ({len(values)} calls)")


if __name__ == "__main__":
    main()

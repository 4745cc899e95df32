"""Teardown benchmark: how fast a master's processes end, the figures behind the generous
bounds of the tests (which allow seconds for what takes milliseconds).

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/teardown.py              # 10 rounds of each
    .venv/bin/python benchmarks/teardown.py --rounds 20

kill -9: a master with 2 workers, one running a script that has a sleeping child; the
master is SIGKILLed and the time until every process of its tree has ended (zombies count
as ended) is measured, polling every millisecond. The workers notice through their
lifeline pipe and kill their trees.
second signal: a master whose script and its child ignore SIGTERM, with a stop grace of
120 s: SIGTERM, then a second SIGTERM 0.3 s later; the time from the second signal until
the master has exited (it includes the 1 s between SIGTERM and SIGKILL of the run's tree).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from benchmaster import start_master, write_config


def config(directory: Path, arguments: list[str], stop_grace: float) -> Path:
    return write_config(directory, {
        "sleeper": {"module": "sleeper", "period": 600, "timeout": 3000,
                    "arguments": arguments},
        "noop": {"module": "noop", "period": 600}}, 2, f"stop_grace = {stop_grace}")


def start(cfg: Path, directory: Path) -> subprocess.Popen[bytes]:
    return start_master(cfg, directory / "master.log", directory / "state")


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_tree(pid: int, size: int, timeout: float = 30) -> list[psutil.Process]:
    """The master and its descendants once there are at least ``size`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        if len(procs) >= size:
            return procs
        time.sleep(0.05)
    raise TimeoutError(f"the master's tree did not reach {size} processes in {timeout} s")


def kill_9_round() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(config(Path(tmp), [], 30), Path(tmp))
        try:
            procs = wait_tree(proc.pid, 4)  # master, 2 workers, the script's child
            time.sleep(0.5)
            began = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            while any(alive(p) for p in procs):
                time.sleep(0.001)
            return time.monotonic() - began
        finally:
            _clean(proc)


def second_signal_round() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(config(Path(tmp), ["stubborn"], 120), Path(tmp))
        try:
            wait_tree(proc.pid, 4)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            return time.monotonic() - began
        finally:
            _clean(proc)


def _clean(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def report(what: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{what} ({len(ms)} rounds), ms: median {statistics.median(ms):.1f}"
          f"  max {ms[-1]:.1f}  min {ms[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    report("kill -9 of the master: until its whole tree has ended",
           [kill_9_round() for _ in range(args.rounds)])
    report("second SIGTERM: until the master has exited (1 s of it the SIGKILL grace)",
           [second_signal_round() for _ in range(args.rounds)])


if __name__ == "__main__":
    main()

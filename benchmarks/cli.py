"""CLI benchmark: how long ``panda-daemon`` commands take, against a bare interpreter.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/cli.py                  # 20 runs of each
    .venv/bin/python benchmarks/cli.py --runs 50

Each command is run as a real process (``python -m pandaserver.commands.main``, as the
``panda-daemon`` entry point does), N times, the commands interleaved round by round so
that a burst of load on the machine touches all of them alike; wall time from spawn to exit.
Compared with ``python -c pass`` timed the same way in the same rounds. The commands:
``--help``, ``status`` (no master running), ``cron2json --help``, ``pause NAME`` and
``fleet`` on a SQLite database of their own (migrated once before the rounds).

Prints, per command: the median and p90 wall time and the median minus bare python's.
Byte code is written on a first warm-up run (as an installed package has it), so no round
compiles sources; the warm-up checks each command's exit status (a failing command would be
timed failing fast). On SQLite, ``pause`` and ``fleet`` read and write through ``sqlite3``
(``pandaserver/db/direct/sqlitedirect.py``), without importing SQLAlchemy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = """[daemon]
enable = True
package = pandaserver.daemons.scripts
n_proc = 2
config = {"dummy_test": {"period": 600}}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   cwd=REPO, check=False)
    return time.perf_counter() - start


def warm_up(name: str, argv: list[str], env: dict[str, str], expected: int) -> None:
    """Run once (byte code written, files in the cache); a command that fails would be
    timed failing fast, so its status is checked here."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if done.returncode != expected:
        sys.exit(f"cli: {name} exited {done.returncode}, not {expected}: nothing timed\n"
                 f"{done.stdout}{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "panda_server.cfg"
        cfg.write_text(CONFIG, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PANDA_DAEMON_STATE_DIR=str(Path(tmp) / "state"), PANDA_NO_ROOT="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        cli = [sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg)]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [*cli, "--help"],
            "status": [*cli, "status", "--pidfile", str(Path(tmp) / "none.pid")],
            "cron2json --help": [*cli, "cron2json", "--help"],
            "pause NAME (SQLite)": [*cli, "pause", "dummy_test"],
            "fleet (SQLite)": [*cli, "fleet"],
        }
        subprocess.run([*cli, "db", "upgrade"], check=True, env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, argv in commands.items():
            warm_up(name, argv, env, 3 if name == "status" else 0)  # status: not running
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
    bare = statistics.median(times["python -c pass"])
    load = os.getloadavg()
    print(f"cli: {args.runs} runs of each, load average {load[0]:.2f} {load[1]:.2f}"
          f" {load[2]:.2f}, {sys.executable}")
    print(f"  {'command':<22} {'median s':>9} {'p90 s':>7} {'minus bare python s':>20}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<22} {median:>9.3f} {percentile(values, 90):>7.3f}"
              f" {median - bare:>20.3f}")


if __name__ == "__main__":
    main()

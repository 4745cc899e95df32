"""What a cron schedule costs the master and the configuration: reading an expression (its
shortest interval included: the config does it once per script at load and reload), the
next firing after an instant (the master, once per run), the latest firing at an instant
(a sync script at start-up, and before each lease ask). Prints medians over rounds; asserts
nothing.

    .venv/bin/python benchmarks/cronfirings.py
    .venv/bin/python benchmarks/cronfirings.py --rounds 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

from pandaserver.config import cronspec

EXPRESSIONS = [
    ("* * * * *", "UTC"),
    ("0 2 * * *", "Europe/Zurich"),
    ("0 9,17 * * *", "America/Chicago"),
    ("5 1-19/6 * * *", "UTC"),
    ("*/7 * * * *", "UTC"),
    ("30 2 * * 1,4", "Europe/Zurich"),
    ("0 0 L * *", "UTC"),
    ("0 3 29 2 *", "UTC"),
]


def timed(call: object, repeat: int) -> float:
    """Median seconds of one ``call()`` over ``repeat`` calls."""
    assert callable(call)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="calls per figure (median)")
    args = parser.parse_args()
    cronspec.parse("* * * * *").next_after(0.0)  # croniter imported once, not measured
    at = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()  # a daylight-saving night
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} calls")
    print(f"{'expression':18s} {'zone':16s} {'read (ms)':>10s} {'next (us)':>10s}"
          f" {'latest (us)':>11s}")
    for expression, zone in EXPRESSIONS:
        def read(expression: str = expression, zone: str = zone) -> None:
            cronspec._shortest.cache_clear()  # what a first load of the config pays
            cronspec.parse(expression, zone).shortest_interval  # noqa: B018

        schedule = cronspec.parse(expression, zone)
        print(f"{expression:18s} {zone:16s} {timed(read, args.rounds) * 1e3:10.2f}"
              f" {timed(lambda s=schedule: s.next_after(at), args.rounds) * 1e6:10.0f}"
              f" {timed(lambda s=schedule: s.latest_at(at), args.rounds) * 1e6:11.0f}")


if __name__ == "__main__":
    main()

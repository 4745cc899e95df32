"""Record how long each test took, for the order of the parallel pass (tests/conftest.py).

Usage: ``python tests/durations.py LOG`` where LOG is the output of a pytest run with
``--durations=0`` (tests/run-all.sh passes it); writes tests/durations.json (test id ->
seconds of setup, call and teardown, rounded). Only the order matters: a run on a busy
machine is as good as a calm one for that.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LINE = re.compile(r"^(?P<seconds>\d+(?:\.\d+)?)s (?:setup|call|teardown) +(?P<test>\S+)$")
OUT = Path(__file__).resolve().parent / "durations.json"


def parse(text: str) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            test = match["test"]
            seconds[test] = seconds.get(test, 0.0) + float(match["seconds"])
    return {test: round(value, 1) for test, value in sorted(seconds.items()) if value >= 0.5}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    found = parse(Path(argv[0]).read_text(encoding="utf-8", errors="replace"))
    if not found:
        print(f"{argv[0]}: no test durations found (was pytest run with --durations=0?)",
              file=sys.stderr)
        return 1
    OUT.write_text(json.dumps(found, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(found)} tests of 0.5 s or more")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

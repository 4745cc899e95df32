"""Status-file benchmark: what one write costs the master's loop, what it costs the writer
thread, and what reading the file costs ``panda-daemon status`` and the pages.

Usage (prints one JSON object per size; asserts nothing):
    .venv/bin/python benchmarks/statusfile.py                    # 20, 200 and 2,000 scripts
    .venv/bin/python benchmarks/statusfile.py --sizes 2000 --writes 100

In process, on a stand-in master of plain values (the status code reads attributes only),
every script with a last outcome. ``loop_ms``: ``StatusFile.tick`` forced, as the loop
calls it (the capture; before the writer thread it was the whole write), one call every
50 ms so the writer keeps up; ``writer_ms``: render, redaction, JSON and the atomic write,
as the thread does them; ``status_text_ms``: read and render as ``panda-daemon status``;
``pages_ms``: the local-master view of the web pages (read, plus a pid check per worker).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet.contention import Contentions
from pandaserver.daemons.master import statusfile as status
from pandaserver.daemons.master.crashloop import CrashLoops
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.timetable import Timetable
from pandaserver.service.hoststatus import local_status, render_local_status
from pandaserver.web.fleetview import local_master_views


def stand_in(count: int) -> Any:
    names = [f"s{i:04d}" for i in range(count)]
    return SimpleNamespace(
        server="bench", started=0.0, fleet=None,
        pool=SimpleNamespace(slots={}, stopping=False, n_proc=8),
        dispatcher=SimpleNamespace(
            scripts=Timetable({n: ScriptState(DaemonSpec(name=n, module="noop",
                                                         period=10.0 + i, timeout=60.0),
                                              next_due=100.0 + i)
                               for i, n in enumerate(names)}),
            unimportable=set(), refusals=SimpleNamespace(contention=Contentions()),
            last_outcomes=dict.fromkeys(names, ("ok", 50.0))),
        controls=SimpleNamespace(crashes=CrashLoops(60.0), paused={}, drain_hold=None))


def timed(call: Callable[[], object], times: int, pause: float = 0.0) -> dict[str, float]:
    spent = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        spent.append((time.perf_counter() - began) * 1000)
        time.sleep(pause)
    spent.sort()
    return {"median": round(statistics.median(spent), 3),
            "p90": round(spent[int(0.9 * (len(spent) - 1))], 3), "max": round(spent[-1], 3)}


def measure(count: int, writes: int) -> dict[str, Any]:
    master = stand_in(count)
    with tempfile.TemporaryDirectory() as tmp:
        path = status.status_path(Path(tmp), "bench")
        sf = status.StatusFile(path)
        clock = iter(range(10**9))
        loop = timed(lambda: sf.tick(master, 120.0 + next(clock), force=True), writes, 0.05)
        sf.writer.close(30.0)
        writer = status.StatusWriter(path)
        cap = status.capture(master, 120.0)
        thread = timed(lambda: writer._write(cap), writes)
        text = timed(lambda: render_local_status(local_status("bench", Path(tmp)) or {}), 20)
        pages = timed(lambda: local_master_views(Path(tmp)), 20)
        size = path.stat().st_size
    return {"scripts": count, "file_bytes": size, "loop_ms": loop, "writer_ms": thread,
            "status_text_ms": text, "pages_ms": pages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 2000])
    parser.add_argument("--writes", type=int, default=40)
    args = parser.parse_args()
    for count in args.sizes:
        print(json.dumps(measure(count, args.writes)), flush=True)


if __name__ == "__main__":
    main()

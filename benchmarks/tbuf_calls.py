"""What PanDA's generic calls on ``tbuf`` cost per call, against the same statement through
plain SQLAlchemy on the same engine (the difference: the statement timeout and time zone set
per call, the bind map, the translation), on SQLite, PostgreSQL and MariaDB.

    .venv/bin/python benchmarks/tbuf_calls.py                 # 2000 calls per case
    .venv/bin/python benchmarks/tbuf_calls.py --calls 500 --backends sqlite postgresql

Starts its own throwaway PostgreSQL and MariaDB (as the tests do: their server binaries are
needed). Prints, per backend and case, the median and p99 of one call in milliseconds and
the statements sent per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from mysql import MariaDbServer  # noqa: E402
from pg import PgCluster  # noqa: E402
from scale import pct  # noqa: E402
from sqlalchemy import URL, Engine, event, text  # noqa: E402

from pandaserver.db.base.engine import engine_from_url  # noqa: E402
from pandaserver.db.base.schema import upgrade  # noqa: E402
from pandaserver.taskbuffer import RunContext, TaskBuffer  # noqa: E402
from pandaserver.taskbuffer.configtable import ConfigStore  # noqa: E402

SELECT = "SELECT pandaid, status FROM t_jobs WHERE pandaid=:id"


@contextmanager
def database(backend: str) -> Iterator[URL]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield URL.create("sqlite", database=str(Path(directory) / "bench.sqlite"))
        return
    server: Any = PgCluster() if backend == "postgresql" else MariaDbServer()
    server.start()
    try:
        yield server.create_database("tbufbench")
    finally:
        server.stop()


def timed(call: Callable[[], object], calls: int, sent: list[str]) -> str:
    for _ in range(min(100, calls)):  # warm: connections, statement caches
        call()
    sent.clear()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return (f"median {statistics.median(times):.3f} ms, p99 {pct(times, 99)} ms,"
            f" {len(sent) / calls:.1f} statements")


def bench(engine: Engine, calls: int) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t_jobs (pandaid INTEGER PRIMARY KEY,"
                          " status VARCHAR(32))"))
        conn.execute(text("INSERT INTO t_jobs VALUES (:id, 'running')"),
                     [{"id": i} for i in range(1000)])
    ConfigStore(engine).set(app="pandaserver", component="bench", key="LIMIT", vo=None,
                            value="10", type_name="int", descr=None, who="bench")
    tbuf = TaskBuffer(engine, RunContext("bench", run_id=1))
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))

    def plain() -> object:
        with engine.connect() as conn:
            rows = conn.execute(text(SELECT), {"id": 7}).all()
            conn.commit()
            return rows

    maps = [{":id": i, ":s": "sent"} for i in range(100)]
    cases: dict[str, Callable[[], object]] = {
        "plain SQLAlchemy select + commit": plain,
        "querySQLS select": lambda: tbuf.querySQLS(SELECT, {":id": 7}),
        "querySQLS update (1 row)": lambda: tbuf.querySQLS(
            "UPDATE t_jobs SET status=:s WHERE pandaid=:id", {":s": "held", ":id": 7}),
        "executemanySQL (100 updates)": lambda: tbuf.executemanySQL(
            "UPDATE t_jobs SET status=:s WHERE pandaid=:id", maps),
        "getConfigValue": lambda: tbuf.getConfigValue("bench", "LIMIT"),
    }
    for what, call in cases.items():
        n = calls // 20 if "executemany" in what else calls
        print(f"  {what}: {timed(call, n, sent)} ({n} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql", "mysql"],
                        choices=["sqlite", "postgresql", "mysql"])
    args = parser.parse_args()
    for backend in args.backends:
        print(backend)
        with database(backend) as url:
            engine = engine_from_url(url, pool_size=2)
            try:
                bench(engine, args.calls)
            finally:
                engine.dispose()


if __name__ == "__main__":
    main()

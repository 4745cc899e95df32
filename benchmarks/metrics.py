"""``/metrics`` against a small and a big history: its cost must not grow with the history.

Usage (prints one JSON object; asserts nothing):
    .venv/bin/python benchmarks/metrics.py                       # 5,000 and 5,000,000 rows
    .venv/bin/python benchmarks/metrics.py --rows 5000 500000 --backends sqlite --repeat 9

For each backend (SQLite in a temporary file; PostgreSQL, a throwaway cluster as the tests
start it, tests/pg.py) and each history size, a fresh database at the head schema gets
``--rows`` history rows bulk-inserted in SQL (spread over a year, ``--scripts`` scripts on
``--servers`` servers, 80 % ok and 5 % each failed, timeout, lost and skipped, every
(script, server) pair with every outcome from the first 2,000 rows on, so that both
histories have the same counter rows; the indexes dropped meanwhile and built after),
counted into the run counters by the code migration 0007 runs on upgrade
(``runcounts.count_rows``: its time is the upgrade's backfill cost), and then timed, median
of ``--repeat`` after one warm-up:

- ``metrics``: a whole ``/metrics`` scrape through the WSGI app (``FleetApp``), the fleet
  overview included;
- ``counters``: its history part alone, the read of ``daemon_run_count``;
- ``window_before``: what the history part cost before the counters, the statement that
  re-counted a one-day window of the history at each scrape (kept here to compare, on the
  same rows: the window holds the last day's rows, ``rows_in_window``).

``ratio`` is the big history's ``metrics`` median over the small one's (target: under 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from bighistory import wsgi  # noqa: E402
from pg import PgCluster, url_text  # noqa: E402
from sqlalchemy import ColumnElement, Engine, case, func, literal, select, text  # noqa: E402

from pandaserver.config import load_config  # noqa: E402
from pandaserver.db.base.engine import engine_from_url  # noqa: E402
from pandaserver.db.base.schema import upgrade  # noqa: E402
from pandaserver.db.base.servertime import db_now, seconds_between  # noqa: E402
from pandaserver.db.base.tables import daemon_run  # noqa: E402
from pandaserver.db.stores.runcounts import DELAY_BUCKETS, DURATION_BUCKETS, count_rows  # noqa: E402
from pandaserver.web.app import FleetApp  # noqa: E402
from pandaserver.web.metrics import HistoryCounters  # noqa: E402
from pandaserver.web.settings import WebSettings  # noqa: E402

YEAR = 365 * 86400


def timed(what: Callable[[], Any], repeat: int) -> float:
    what()  # warm-up
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        what()
        samples.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(samples), 2)


# ----- filling a history -----------------------------------------------------------------
PG_FILL = """
INSERT INTO daemon_run (script, server, pid, due_at, started_at, ended_at, outcome, error)
SELECT 'script' || lpad((g % :scripts)::text, 3, '0'), 'pandaserver' || (g / :scripts % :servers),
       1000 + g % 5000, started - interval '2 ms', started,
       started + make_interval(secs => (g % 600) * 0.137),
       coalesce((ARRAY['failed', 'timeout', 'lost', 'skipped'])[g / (:scripts * :servers) % 20
                                                                   + 1], 'ok'), NULL
FROM (SELECT g, statement_timestamp() - make_interval(secs => g * :step) AS started
      FROM generate_series(1, :rows) AS g) AS s
"""
SQLITE_FILL = """
WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < :rows)
INSERT INTO daemon_run (script, server, pid, due_at, started_at, ended_at, outcome, error)
SELECT 'script' || substr('00' || (g % :scripts), -3), 'pandaserver' || (g / :scripts % :servers),
       1000 + g % 5000, strftime('%Y-%m-%d %H:%M:%f000', 'now', -(g * :step + 0.002) || ' seconds'),
       strftime('%Y-%m-%d %H:%M:%f000', 'now', -(g * :step) || ' seconds'),
       strftime('%Y-%m-%d %H:%M:%f000', 'now', -(g * :step) + (g % 600) * 0.137 || ' seconds'),
       CASE g / (:scripts * :servers) % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'timeout'
            WHEN 2 THEN 'lost' WHEN 3 THEN 'skipped' ELSE 'ok' END, NULL
FROM n
"""


def fill(engine: Engine, rows: int, scripts: int, servers: int) -> dict[str, float]:
    indexes = list(daemon_run.indexes)
    params = {"rows": rows, "scripts": scripts, "servers": servers, "step": YEAR / rows}
    began = time.perf_counter()
    with engine.begin() as conn:
        for ix in indexes:
            conn.execute(text(f"DROP INDEX {ix.name}"))
        sql = PG_FILL if engine.dialect.name == "postgresql" else SQLITE_FILL
        conn.execute(text(sql), params)
        inserted = time.perf_counter()
        for ix in indexes:
            ix.create(conn)
    built = time.perf_counter()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE daemon_run"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    with engine.begin() as conn:  # what the upgrade to 0007 does with the rows it finds
        counting = time.perf_counter()
        counted = count_rows(conn)
    done = time.perf_counter()
    return {"insert_s": round(inserted - began, 1), "index_s": round(built - inserted, 1),
            "backfill_s": round(done - counting, 1), "backfill_rows": counted}


# ----- what a scrape read before the counters ----------------------------------------------
def window_before(conn: Any, days: float = 1.0) -> int:
    """The statement that re-counted the window at each scrape before migration 0007."""
    r = daemon_run
    since = db_now(conn) - timedelta(days=days)
    duration = seconds_between(r.c.ended_at, r.c.started_at)
    delay = seconds_between(r.c.started_at, r.c.due_at)
    columns: list[ColumnElement[Any]] = [func.count()]
    columns.append(func.coalesce(func.sum(duration), literal(0.0)))
    columns.extend(func.sum(case((duration <= b, 1), else_=0)) for b in DURATION_BUCKETS)
    columns.append(func.count(delay))
    columns.append(func.coalesce(func.sum(delay), literal(0.0)))
    columns.extend(func.sum(case((delay <= b, 1), else_=0)) for b in DELAY_BUCKETS)
    keys = [r.c.script, r.c.server, r.c.outcome]
    stmt = (select(*keys, *columns).where(r.c.started_at >= since, r.c.outcome != "running")
            .group_by(*keys))
    return len(conn.execute(stmt).all())


# ----- the backends -------------------------------------------------------------------------
@contextmanager
def database(backend: str, tmp: Path, name: str) -> Iterator[tuple[Engine, str]]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / (name + '.db')}"
        engine = engine_from_url(url)
        try:
            yield engine, url
        finally:
            engine.dispose()
        return
    cluster = PgCluster()
    cluster.start()
    try:
        pg = cluster.create_database(name)
        engine = engine_from_url(pg)
        try:
            yield engine, url_text(pg)
        finally:
            engine.dispose()
    finally:
        cluster.stop()


def one(backend: str, rows: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with database(backend, tmp, f"metrics{rows}") as (engine, url):
        upgrade(engine)
        out["fill"] = fill(engine, rows, args.scripts, args.servers)
        cfg_path = tmp / f"panda_server_{backend}_{rows}.cfg"
        scripts = {f"script{i:03d}": {"module": "noop", "period": 60}
                   for i in range(args.scripts)}
        cfg_path.write_text("[daemon]\nenable = True\npackage = pandaserver.daemons.scripts\n"
                            f"db_url = {url}\nconfig = {json.dumps(scripts)}\n",
                            encoding="utf-8")
        app = FleetApp(load_config(str(cfg_path)), WebSettings())
        app.reader.state_dir = tmp / "state"
        out["metrics_ms"] = timed(lambda: wsgi(app, "/metrics"), args.repeat)
        with engine.connect() as conn:
            out["counters_ms"] = timed(lambda: HistoryCounters().read(conn), args.repeat)
            out["window_before_ms"] = timed(lambda: window_before(conn), args.repeat)
            since = db_now(conn) - timedelta(days=1)
            out["rows_in_window"] = conn.execute(select(func.count()).select_from(
                daemon_run).where(daemon_run.c.started_at >= since)).scalar_one()
            out["counter_rows"] = conn.execute(text(
                "SELECT count(*) FROM daemon_run_count")).scalar_one()
        app.reader.engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 5_000_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])
    parser.add_argument("--scripts", type=int, default=100)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            per = result[backend] = {}
            for rows in args.rows:
                per[str(rows)] = one(backend, rows, args, Path(tmp))
                print(f"{backend} {rows} rows: {per[str(rows)]}", file=sys.stderr, flush=True)
            sizes = [per[str(r)]["metrics_ms"] for r in args.rows]
            per["ratio"] = round(max(sizes) / min(sizes), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""A year of history: the reads of the history pages and one prune step over 5 million rows.

Usage (prints one JSON object; asserts nothing; stops by itself in a few minutes):
    .venv/bin/python benchmarks/bighistory.py                 # 5,000,000 rows
    .venv/bin/python benchmarks/bighistory.py --rows 500000 --repeat 5

On a throwaway PostgreSQL (tests/pg.py, as the tests start it) at the head schema, the
rows are generated inside the database (``generate_series``, indexes dropped meanwhile and
built after, which times the build an upgrade to 0006 does) shaped like a year of a fleet:
``--scripts`` scripts (periods log-uniform from 10 s to 3,600 s; one in five sync) on
``--servers`` servers; per (script, server) a stream of runs evenly spaced over the year,
its share of the rows in proportion to 1/period (a year at those periods would be far more
rows than 5 million: the spacing is the period times one factor, printed as
``period_stretch``); outcomes mostly ok, with failed (a 600-character traceback), timeout,
lost, killed and, for sync scripts, skipped attempts (on one server only skipped: it never
won the lease).

Timed (median of ``--repeat``, after one warm-up), each in-process through the real code:
``panda-daemon history`` and ``history NAME`` (``cmd_history``, its output discarded), the
timeline page ``/scripts/NAME``, the fleet page ``/`` and ``/metrics`` (the WSGI app
``FleetApp``, called as a WSGI server would), ``/metrics`` with a 30-day counter window
(the rows a 30 times denser fleet has in its 1-day window), and one prune step by age and
by rows (2,000 rows each). The CLI is also run once as a subprocess (its wall time, Python
start-up and imports included). Every statement each one sends is EXPLAINed; any
sequential scan of ``daemon_run`` is reported. Then the table's size on disk
(``pg_total_relation_size``, indexes included), per row and per script-year.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from wsgiref.util import setup_testing_defaults  # noqa: E402

from pg import PgCluster, url_text  # noqa: E402
from sqlalchemy import Engine, event, text  # noqa: E402

from pandaserver.commands.database import cmd_history  # noqa: E402
from pandaserver.config import load_config  # noqa: E402
from pandaserver.db.base.engine import engine_from_url  # noqa: E402
from pandaserver.db.base.schema import upgrade  # noqa: E402
from pandaserver.db.base.tables import daemon_run  # noqa: E402
from pandaserver.db.stores.pruning import PrunePass, Retention  # noqa: E402
from pandaserver.web.app import FleetApp  # noqa: E402
from pandaserver.web.metrics import HistoryCounters  # noqa: E402
from pandaserver.web.settings import WebSettings  # noqa: E402

YEAR = 365 * 86400.0
ERROR = ("Traceback (most recent call last):\n" + "  File \"/opt/panda/x.py\", line 42, in"
         " main\n    do_it()\n" * 6 + "ValueError: bad row")[:600]


def streams(scripts: int, servers: int, rows: int, seed: int = 13) -> tuple[list[dict[str, Any]],
                                                                            float]:
    rand = random.Random(seed)
    out = []
    for i in range(scripts):
        period = math.exp(rand.uniform(math.log(10), math.log(3600)))
        sync = i % 5 == 0
        for k in range(servers):
            out.append({"script": f"script{i:03d}", "server": f"pandaserver{k:02d}.cern.ch",
                        "period": period, "sync": sync, "loser": sync and k == servers - 1,
                        "natural": YEAR / period, "stream": len(out)})
    natural = sum(s["natural"] for s in out)
    stretch = natural / rows
    for s in out:
        s["n"] = max(1, round(s["natural"] / stretch))
        s["step"] = YEAR / s["n"]
    return out, stretch


def generate(engine: Engine, plan: list[dict[str, Any]]) -> dict[str, float]:
    """Fill daemon_run (indexes dropped, then built again: their build time is returned)."""
    indexes = list(daemon_run.indexes)
    with engine.begin() as conn:
        for ix in indexes:
            conn.execute(text(f"DROP INDEX {ix.name}"))
        conn.execute(text("CREATE TEMP TABLE streams (stream int, script text, server text,"
                          " period float8, sync bool, loser bool, n int, step float8)"
                          " ON COMMIT DROP"))
        conn.execute(text("INSERT INTO streams VALUES (:stream, :script, :server, :period,"
                          " :sync, :loser, :n, :step)"), plan)
        began = time.perf_counter()
        conn.execute(text(f"""
            INSERT INTO daemon_run (script, server, pid, generation, due_at, started_at,
                                    ended_at, outcome, error, master_id, master_pid, run_id)
            SELECT script, server, pid, NULL, started - interval '2 ms', started,
                   CASE WHEN outcome = 'skipped' THEN started
                        ELSE started + make_interval(secs => least(period * 0.3, 600) * r2) END,
                   outcome,
                   CASE outcome WHEN 'failed' THEN :err WHEN 'timeout' THEN 'timed out after'
                        || ' 600 s' WHEN 'skipped' THEN 'lease held by pandaserver00.cern.ch'
                        WHEN 'lost' THEN 'the master stopped before the run ended' END,
                   md5(server || (g / 20000)::text), 4000 + stream, stream::bigint * 10000000 + g
            FROM (
              SELECT script, server, period, stream, g, pid, started, r2,
                     CASE WHEN loser THEN 'skipped'
                          WHEN sync AND r1 < 0.5 THEN 'skipped'
                          WHEN r3 < 0.93 THEN 'ok' WHEN r3 < 0.97 THEN 'failed'
                          WHEN r3 < 0.985 THEN 'timeout' WHEN r3 < 0.995 THEN 'lost'
                          ELSE 'killed' END AS outcome
              FROM (
                SELECT s.*, g, 10000 + g % 50000 AS pid,
                       now() - make_interval(secs => {YEAR} - g * s.step) AS started,
                       random() AS r1, random() AS r2, random() AS r3
                FROM streams s, generate_series(0, s.n - 1) AS g
              ) AS drawn
            ) AS rows
            ORDER BY started  -- written in time order, as masters write them
        """), {"err": ERROR})
        inserted = time.perf_counter() - began
    began = time.perf_counter()
    with engine.begin() as conn:
        for ix in indexes:
            ix.create(conn)
    built = time.perf_counter() - began
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE daemon_run"))
    return {"insert_s": round(inserted, 1), "index_build_s": round(built, 1)}


class Statements:
    """Every statement sent while ``capturing``; EXPLAINed afterwards."""

    def __init__(self) -> None:
        self.on = False
        self.seen: list[tuple[str, Any]] = []
        self.db_seconds = 0.0  # in cursor.execute, every statement
        self._began = 0.0
        event.listen(Engine, "before_cursor_execute", self._hook)
        event.listen(Engine, "after_cursor_execute", self._after)

    def _hook(self, conn: Any, cursor: Any, statement: str, params: Any, context: Any,
              executemany: bool) -> None:
        self._began = time.perf_counter()
        if self.on and "daemon_run" in statement:
            self.seen.append((statement, params))

    def _after(self, *args: Any) -> None:
        if self.on:
            self.db_seconds += time.perf_counter() - self._began

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        self.seen, self.on, self.db_seconds = [], True, 0.0
        try:
            yield
        finally:
            self.on = False

    def seq_scans(self, engine: Engine) -> list[str]:
        found = []
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for statement, params in self.seen:
                if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                    continue
                cur.execute("EXPLAIN " + statement, params)
                plan = "\n".join(row[0] for row in cur.fetchall())
                if "Seq Scan on daemon_run" in plan:
                    found.append(statement.split("\n")[0][:120])
            raw.rollback()
        finally:
            raw.close()
        return found


def timed(what: Callable[[], Any], repeat: int) -> dict[str, float]:
    what()  # warm-up
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        what()
        samples.append((time.perf_counter() - began) * 1000)
    return {"median_ms": round(statistics.median(samples), 1),
            "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1)}


def wsgi(app: Any, path: str, query: str = "") -> bytes:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET",
                               "QUERY_STRING": query}
    setup_testing_defaults(environ)
    seen: dict[str, str] = {}
    body = b"".join(app(environ, lambda status, headers: seen.update(s=status)))
    if not seen["s"].startswith("200"):
        raise RuntimeError(f"{path}: {seen['s']}: {body[:300]!r}")
    return body


def sizes(engine: Engine, rows: int) -> dict[str, Any]:
    with engine.connect() as conn:
        total = conn.execute(text("SELECT pg_total_relation_size('daemon_run')")).scalar_one()
        heap = conn.execute(text("SELECT pg_table_size('daemon_run')")).scalar_one()
        each = dict(conn.execute(text(
            "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes"
            " WHERE relname = 'daemon_run' ORDER BY 2 DESC")).all())
    per_row = total / rows
    year = {f"period_{p}s": {"rows": round(YEAR / p), "MB": round(YEAR / p * per_row / 1e6, 1)}
            for p in (60, 600)}
    return {"total_MB": round(total / 1e6, 1), "table_MB": round(heap / 1e6, 1),
            "indexes_MB": {k: round(v / 1e6, 1) for k, v in each.items()},
            "bytes_per_row": round(per_row, 1), "per_script_year_one_server": year}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--scripts", type=int, default=300)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    plan, stretch = streams(args.scripts, args.servers, args.rows)
    out: dict[str, Any] = {"rows_planned": sum(s["n"] for s in plan), "scripts": args.scripts,
                           "servers": args.servers, "period_stretch": round(stretch, 1)}
    cluster = PgCluster()
    cluster.start()
    try:
        url = cluster.create_database("big")
        engine = engine_from_url(url)
        upgrade(engine)
        out["generate"] = generate(engine, plan)
        with engine.connect() as conn:
            out["rows"] = rows = conn.execute(text("SELECT count(*) FROM daemon_run")).scalar_one()
            out["outcomes"] = dict(conn.execute(text(
                "SELECT outcome, count(*) FROM daemon_run GROUP BY 1 ORDER BY 2 DESC")).all())
        out["size"] = sizes(engine, rows)
        out["timings"] = measure(engine, url_text(url), plan, args.repeat)
        engine.dispose()
    finally:
        cluster.stop()
    print(json.dumps(out, indent=1))


def measure(engine: Engine, url: str, plan: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    scripts = {s["script"]: {"module": "noop", "period": round(s["period"], 1),
                             "sync": s["sync"]} for s in plan}
    busiest = min(plan, key=lambda s: s["period"])["script"]
    capture = Statements()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "panda_server.cfg"
        cfg_path.write_text("[daemon]\nenable = True\npackage = pandaserver.daemons.scripts\n"
                            f"db_url = {url}\nconfig = {json.dumps(scripts)}\n", encoding="utf-8")
        cfg = load_config(str(cfg_path))
        app = FleetApp(cfg, WebSettings())
        app.reader.state_dir = Path(tmp) / "state"

        def cli(name: str | None) -> Callable[[], Any]:
            ns = argparse.Namespace(name=name, limit=50, json=False)

            def run() -> None:
                with contextlib.redirect_stdout(io.StringIO()):
                    cmd_history(cfg, ns)
            return run

        targets: dict[str, Callable[[], Any]] = {
            "history_cli": cli(None),
            "history_cli_NAME": cli(busiest),
            "timeline_page": lambda: wsgi(app, f"/scripts/{busiest}"),
            "fleet_page": lambda: wsgi(app, "/"),
            "metrics": lambda: wsgi(app, "/metrics"),
        }
        for name, what in targets.items():
            with capture.capturing():
                result[name] = timed(what, repeat)
            # the database's part: time inside cursor.execute, per call (warm-up included)
            result[name]["in_database_ms"] = round(capture.db_seconds * 1000 / (repeat + 1), 1)
            result[name]["seq_scans_of_daemon_run"] = capture.seq_scans(engine)
        # /metrics reads the run counters (daemon_run_count), not a window of the history:
        # its cost against the history's size is benchmarks/metrics.py
        with engine.connect() as conn:
            result["metrics_counters"] = timed(lambda: HistoryCounters().read(conn), repeat)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg_path),
                        "history"], check=True, capture_output=True)
        result["history_cli_subprocess_ms"] = round((time.perf_counter() - began) * 1000, 1)
    result["prune_step_age_2000"] = prune_steps(engine, Retention(days=300), repeat)
    result["prune_step_rows_2000"] = prune_steps(engine, Retention(rows=1000), repeat)
    return result


def prune_steps(engine: Engine, retention: Retention, repeat: int) -> dict[str, Any]:
    work = PrunePass(engine, retention, batch=2000)
    samples, deleted = [], []
    for _ in range(repeat):
        began = time.perf_counter()
        step = work.step()
        samples.append((time.perf_counter() - began) * 1000)
        deleted.append(step.deleted)
    return {"median_ms": round(statistics.median(samples), 1), "max_ms": round(max(samples), 1),
            "deleted_per_step": deleted}


if __name__ == "__main__":
    main()

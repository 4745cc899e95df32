"""History write benchmark: rows per second of the master's batched, keyed writes.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/history.py                  # SQLite and PostgreSQL
    .venv/bin/python benchmarks/history.py --runs 5000 --batch 1 10 100 500

Each run is two writes, as the master makes them: its start at dispatch (a ``running`` row,
insert-if-absent) and its end (insert-or-complete). ``--batch`` runs are written per
transaction (``HistoryStore.write_many``), starts and ends in separate batches (the usual
case for runs longer than the 0.25 s batching), on the master's engine (autocommit, no
pre-ping). PostgreSQL is a throwaway cluster of this machine (as the tests start it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from pg import PgCluster  # noqa: E402
from sqlalchemy import URL  # noqa: E402

from pandaserver.db.base.engine import engine_from_url  # noqa: E402
from pandaserver.db.base.schema import upgrade  # noqa: E402
from pandaserver.db.stores.history import HistoryStore  # noqa: E402
from pandaserver.db.stores.runrecords import RunRecord, RunStart  # noqa: E402


def measure(url: URL, runs: int, batch: int) -> float:
    """Rows (runs) per second, each run written as a start and an end."""
    engine = engine_from_url(url, autocommit=True, pre_ping=False)
    try:
        upgrade(engine)
        history = HistoryStore(engine)
        master = uuid.uuid4().hex
        began = time.perf_counter()
        for first in range(1, runs + 1, batch):
            ids = range(first, min(first + batch, runs + 1))
            history.write_many([RunStart("bench", "srv", master, 1, i, pid=2,
                                         due_before_start=0.001) for i in ids])
            history.write_many([RunRecord("bench", "srv", 2, "ok", duration=0.5,
                                          due_before_start=0.001, master_id=master,
                                          master_pid=1, run_id=i) for i in ids])
        return runs / (time.perf_counter() - began)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100, 500])
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch:
            url = URL.create("sqlite", database=str(Path(tmp) / f"h{batch}.sqlite"))
            print(f"sqlite      batch {batch:4d}: {measure(url, args.runs, batch):8.0f} runs/s")
    if args.no_postgresql:
        return
    cluster = PgCluster()
    cluster.start()
    try:
        for batch in args.batch:
            url = cluster.create_database(f"bench{batch}")
            print(f"postgresql  batch {batch:4d}: {measure(url, args.runs, batch):8.0f} runs/s")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()

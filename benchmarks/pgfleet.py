"""What benchmarks/locks.py and benchmarks/fleetscale.py share: K masters on one throwaway
PostgreSQL (tests/pg.py) with its statement log on, the lease statements counted by kind,
grants closer than the period less the tolerance (logged by trigger) and overlapping sync runs
(from the history).

    with pg_fleet(k, scripts, n_proc=1, extra=(...)) as fleet:
        mark = fleet.mark()            # the statement log's size now
        ...                            # the window
        fleet.statements(mark)         # lease statements since, by kind
        fleet.query("SELECT ...")      # on the fleet's database
    fleet.left                         # pids still alive after the stop (must be empty)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from pg import PgCluster, url_text
from scale import env, start_master, stop_all, write_config

from pandaserver.db.base.servertime import due_tolerance

# kinds of statements the lease path sends, by how each starts (see db/stores/leases.py)
KINDS = (
    ("grant", re.compile(r"^(WITH \w+ AS\s+\()?\s*(INSERT INTO|UPDATE) daemon_lease\b.*"
                         r"(ON CONFLICT|RETURNING)", re.S)),
    ("contended_update", re.compile(r"^UPDATE daemon_lease SET contended")),
    # a release that also writes its run's end (db/stores/grantrun.py)
    ("release_or_renew", re.compile(r"^WITH ended_run AS\s*\(\s*UPDATE daemon_run\b.*\)\s*"
                                    r"UPDATE daemon_lease\b", re.S)),
    ("loser_read", re.compile(r"^SELECT daemon_lease\.owner_server")),
    ("table_read", re.compile(r"^SELECT daemon_lease\.name")),
    ("release_or_renew", re.compile(r"^UPDATE daemon_lease\b")),
    ("server_list", re.compile(r"^SELECT daemon_server\.server")),
)
# one logged statement: up to the next log line (default log_line_prefix '%m [%p] ')
STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*?)(?=\n\d{4}-\d\d-\d\d \d|\Z)",
                       re.S)


# every grant, logged by the database itself (exact, on its clock)
GRANT_LOG = """
CREATE TABLE bench_grant (name text, at timestamptz);
CREATE FUNCTION bench_log_grant() RETURNS trigger AS $$ BEGIN
  IF TG_OP = 'INSERT' OR NEW.generation <> OLD.generation THEN
    INSERT INTO bench_grant VALUES (NEW.name, NEW.acquired_at);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_log_grant AFTER INSERT OR UPDATE ON daemon_lease
  FOR EACH ROW EXECUTE FUNCTION bench_log_grant();
"""


def admin(cluster: PgCluster, dbname: str, sql: str) -> list[tuple[Any, ...]]:
    return cluster.sql(sql, dbname)


def count_statements(text: str) -> dict[str, int]:
    """Lease-path statements in a PostgreSQL statement log, by kind (``KINDS``, first
    match; a grant is also an UPDATE when the dialect spells it so)."""
    counts: dict[str, int] = defaultdict(int)
    for match in STATEMENT.finditer(text):
        statement = match.group(1).strip()
        for kind, pattern in KINDS:
            if pattern.search(statement):
                counts[kind] += 1
                break
        else:
            if "daemon_lease" in statement:  # a shape not foreseen here: still counted
                counts["other_lease"] += 1
    return dict(counts)


def bad_runs(rows: list[tuple[Any, ...]]) -> tuple[int, float]:
    """(overlaps, smallest start-to-start gap) of (script, start, end) rows of ``ok`` runs
    (history dates them on the database clock to a few ms): a run starting before the
    previous one of its script ended (less 5 ms) is an overlap."""
    by_script: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for script, start, end in rows:
        by_script[str(script)].append((float(start), float(end)))
    overlaps = 0
    smallest = float("inf")
    for runs in by_script.values():
        for (s0, e0), (s1, _) in pairwise(sorted(runs)):
            smallest = min(smallest, s1 - s0)
            overlaps += s1 < e0 - 0.005
    return overlaps, smallest


def grid_duplicates(rows: list[tuple[Any, ...]], period: float) -> int:
    """Grants closer to the script's previous grant than the period less the tolerance
    (``due_tolerance``: docs/scheduling.md), from (name, microseconds since the script's
    first grant) rows of ``GRANT_LOG`` in order. A grant on time keeps the grid, a late one
    counts the period from itself: either way the next is never closer than that."""
    floor = round((period - due_tolerance(period)) * 1_000_000)
    previous: dict[str, int] = {}
    duplicates = 0
    for name, since in rows:
        key, at = str(name), int(since)
        duplicates += key in previous and at - previous[key] < floor
        previous[key] = at
    return duplicates


@dataclass
class PgFleet:
    cluster: PgCluster
    dbname: str
    directory: Path
    logs: list[Path]
    masters: list[subprocess.Popen[bytes]] = field(default_factory=list)
    left: list[int] = field(default_factory=list)

    def mark(self) -> int:
        return self.cluster.logfile.stat().st_size

    def statements(self, since: int) -> dict[str, int]:
        with self.cluster.logfile.open(encoding="utf-8", errors="replace") as handle:
            handle.seek(since)
            return count_statements(handle.read())

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return admin(self.cluster, self.dbname, sql)

    def duplicates(self, period: float) -> int:
        """Grants closer than the period less the tolerance (must be 0), from ``GRANT_LOG``."""
        return grid_duplicates(self.query(
            "SELECT name, CAST(EXTRACT(EPOCH FROM at - min(at) OVER (PARTITION BY name))"
            " * 1000000 AS BIGINT) FROM bench_grant ORDER BY name, at"), period)

    def stop(self) -> None:
        if self.masters:
            self.left = stop_all(self.masters)
            self.masters = []


@contextmanager
def pg_fleet(k: int, scripts: dict[str, dict[str, Any]], n_proc: int,
             extra: tuple[str, ...] = (), log_statements: bool = True,
             name: str = "fleet") -> Iterator[PgFleet]:
    """A throwaway cluster, the schema, K masters ``name00``... running; all stopped (and
    the cluster removed) at the end, masters first (``PgFleet.stop`` may come earlier)."""
    cluster = PgCluster()
    cluster.start()
    try:
        url = url_text(cluster.create_database(name))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = write_config(Path(tmp), scripts, n_proc, url, extra=extra)
            subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                            "db", "upgrade"], check=True, env=env(), capture_output=True)
            admin(cluster, name, GRANT_LOG)
            if log_statements:  # the server logs every statement (slows it a little)
                admin(cluster, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
                admin(cluster, "postgres", "SELECT pg_reload_conf()")
            logs = [Path(tmp) / f"m{i}.log" for i in range(k)]
            fleet = PgFleet(cluster, name, Path(tmp), logs)
            try:
                fleet.masters = [start_master(cfg, log, f"{name}{i:02d}", Path(tmp))
                                 for i, log in enumerate(logs)]
                yield fleet
            finally:
                fleet.stop()
    finally:
        cluster.stop()

"""Masters sharing one real PostgreSQL, for the acceptance tests: a config with its schema
upgraded, the CLI on it, the events of a fleet, and a database outage cut and restored."""

from __future__ import annotations

import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness import MasterProcess, running_master, script_env, write_config
from pg import PgCluster, url_text
from sqlalchemy import URL


def fleet_config(tmp_path: Path, pg_url: URL, scripts: dict[str, dict[str, Any]], *,
                 upgrade: bool = True, **daemon: Any) -> Path:
    """A config on ``pg_url`` in ``tmp_path`` (made if need be; heartbeat every second unless
    said), its schema upgraded unless ``upgrade`` is False."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    daemon.setdefault("heartbeat_interval", 1)
    cfg = write_config(tmp_path, scripts, db_url=url_text(pg_url), **daemon)
    if upgrade:
        upgraded = cli(tmp_path, cfg, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
    return cfg


def cli(tmp_path: Path, cfg: Path, *args: str, server: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``panda-daemon -c CFG [--server-name SERVER] ARGS...``, its output captured."""
    named = ["--server-name", server] if server is not None else []
    return subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                           *named, *args], capture_output=True, text=True, timeout=90,
                          env=script_env(tmp_path / "cli.jsonl"), stdin=subprocess.DEVNULL)


LIBFAKETIME = next((p for p in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                                  "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                                  "/usr/lib/faketime/libfaketime.so.1") if Path(p).exists()), None)


def faked_clock_env(clock_file: Path) -> dict[str, str]:
    """libfaketime for a master and its workers: the wall clock (time.time, datetime.now)
    follows ``clock_file`` (re-read every second); the monotonic clock is left alone."""
    assert LIBFAKETIME is not None, "libfaketime is needed (apt-get install faketime)"
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(clock_file),
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def start_fleet(stack: ExitStack, cfg: Path, tmp_path: Path, servers: dict[str, str]
                ) -> list[MasterProcess]:
    """One master per server; ``servers`` maps each name to its wall-clock offset, in
    libfaketime's notation ("+300", "-2h"), written to a file the test may rewrite."""
    masters = []
    for name, offset in servers.items():
        clock_file = tmp_path / f"clock-{name}"
        clock_file.write_text(offset + "\n")
        masters.append(stack.enter_context(running_master(
            cfg, tmp_path, server=name, extra_env=faked_clock_env(clock_file))))
    return masters


def fleet_events(masters: list[MasterProcess], event: str, name: str) -> list[dict[str, Any]]:
    """The ``event``s of script ``name`` on every master, each with its server, by time."""
    rows = []
    for master in masters:
        for row in master.events(event, name):
            rows.append({**row, "server": master.record.stem.removeprefix("record-")})
    return sorted(rows, key=lambda r: r["t"])


def admin(pg_cluster: PgCluster, sql: str) -> None:
    """``sql`` as the superuser on the ``postgres`` database, autocommit."""
    pg_cluster.sql(sql)


def cut(pg_cluster: PgCluster, dbname: str) -> None:
    """An outage of ``dbname``: no new connection, the open ones terminated."""
    admin(pg_cluster, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    admin(pg_cluster, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      f" WHERE datname = '{dbname}'")


def restore(pg_cluster: PgCluster, dbname: str) -> None:
    admin(pg_cluster, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')


# Every grant of every lease, logged by the database itself (a trigger on daemon_lease).
GRANT_LOG = """
CREATE TABLE test_grant_log (name text, generation int, owner text, at timestamptz);
CREATE FUNCTION test_log_grant() RETURNS trigger AS $$ BEGIN
  IF TG_OP = 'INSERT' OR NEW.generation <> OLD.generation THEN
    INSERT INTO test_grant_log VALUES (NEW.name, NEW.generation, NEW.owner_server,
                                       NEW.acquired_at);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_grant_log AFTER INSERT OR UPDATE ON daemon_lease
  FOR EACH ROW EXECUTE FUNCTION test_log_grant();
"""


def log_grants(cluster: PgCluster, url: URL) -> None:
    """Log every grant of the fleet's database ``url`` in ``test_grant_log`` from now on."""
    cluster.sql(GRANT_LOG, str(url.database))


def granted(cluster: PgCluster, url: URL) -> list[tuple[int, Any, str]]:
    """The grants logged so far: (generation, the database's time, server), in order."""
    rows = cluster.sql("SELECT generation, at, owner FROM test_grant_log ORDER BY generation",
                       str(url.database))
    return [(int(g), at, str(owner)) for g, at, owner in rows]

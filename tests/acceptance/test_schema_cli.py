"""The schema check at start-up, on real databases left at an older revision (as a fleet
looks while panda-daemon is upgraded server by server): docs/database.md, "Schema versions
and migrations"."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from harness import running_master, write_config
from pg import PgCluster
from pgfleet import cli, cut, fleet_config, restore
from sqlalchemy import URL

from pandaserver.db.base import schema
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import current_revision, head_revision, known_revisions

OLDEST = known_revisions()[-1]


def _at_oldest(url: URL) -> None:
    """Migrate a fresh database only to the oldest revision (an older `db upgrade`)."""
    engine = engine_from_url(url)
    try:
        with engine.begin() as conn:
            command.upgrade(schema._config(conn), OLDEST)
        assert current_revision(engine) == OLDEST
    finally:
        engine.dispose()


def test_an_older_shared_schema_refuses_run_and_run_once_until_db_upgrade(
        tmp_path: Path, pg_url: URL) -> None:
    _at_oldest(pg_url)
    cfg = fleet_config(tmp_path, pg_url, {"job": {"module": "record", "period": 60,
                                                  "sync": True}}, upgrade=False, lease_ttl=60)
    message = (f"database schema {OLDEST} is older than this panda-daemon needs"
               f" (head {head_revision()}); run `panda-daemon db upgrade`")
    run = cli(tmp_path, cfg, "run")
    assert run.returncode == 8, run.stderr
    assert f"cannot start: {message}" in run.stderr and "master started" not in run.stderr
    once = cli(tmp_path, cfg, "run-once", "job")
    assert once.returncode == 8 and f"cannot run: {message}" in once.stderr
    assert not (tmp_path / "cli.jsonl").exists(), "a script ran on a refused schema"

    upgraded = cli(tmp_path, cfg, "db", "upgrade")
    assert upgraded.returncode == 0
    assert f"schema upgraded from {OLDEST} to {head_revision()}" in upgraded.stdout
    assert cli(tmp_path, cfg, "run-once", "job").returncode == 0


def test_an_older_sqlite_schema_is_upgraded_by_the_master_itself(tmp_path: Path) -> None:
    database = tmp_path / "fleet.sqlite"
    url = URL.create("sqlite", database=str(database))
    _at_oldest(url)
    cfg = write_config(tmp_path, {"job": {"module": "record", "period": 60, "sync": True}},
                       db_url=f"sqlite:///{database}")
    once = cli(tmp_path, cfg, "run-once", "job")
    assert once.returncode == 0, once.stderr
    engine = engine_from_url(url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_an_older_schema_found_after_an_outage_at_start_skips_sync_scripts_only(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    # The master started while the database was unreachable, so it could not check the
    # schema then: it keeps running, skips sync scripts while the schema is older (one
    # ERROR), and runs them once an operator has run `db upgrade`.
    _at_oldest(pg_url)
    cfg = fleet_config(tmp_path, pg_url, {"sync_s": {"module": "record", "period": 0.5,
                                                     "sync": True},
                                          "local_n": {"module": "record", "period": 0.5}},
                       upgrade=False, lease_ttl=60)
    dbname = str(pg_url.database)
    cut(pg_cluster, dbname)
    try:
        with running_master(cfg, tmp_path, server="solo") as master:
            master.wait_log("database unavailable", timeout=30)
            restore(pg_cluster, dbname)
            master.wait_log("database refused: database schema", timeout=30)
            local = len(master.events("start", "local_n"))
            master.wait_events(local + 4, "start", "local_n", timeout=30)
            assert master.events("start", "sync_s") == [], "a sync script ran on an old schema"
            assert master.log().count("database refused:") == 1
            assert cli(tmp_path, cfg, "db", "upgrade").returncode == 0
            master.wait_log("database available again", timeout=30)
            master.wait_events(2, "start", "sync_s", timeout=30)
            assert master.stop() == 0
    finally:
        restore(pg_cluster, dbname)

"""A script written for the original PanDA daemon runs unmodified through a real master on
PostgreSQL: its process lock, config value, queries and bulk update through ``tbuf``."""

from __future__ import annotations

from pathlib import Path

from harness import running_master
from pg import url_text
from pgfleet import cli, fleet_config
from sqlalchemy import URL, create_engine, text


def test_a_panda_style_script_runs_unmodified_on_postgresql(tmp_path: Path,
                                                            pg_url: URL) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"panda_style": {"module": "panda_style",
                                                          "period": 3600}})
    engine = create_engine(url_text(pg_url))
    try:
        with engine.begin() as conn:  # a PanDA table, as PanDA's own schema has it
            conn.execute(text("CREATE TABLE jobsActive4 (PandaID BIGINT PRIMARY KEY,"
                              " jobStatus VARCHAR(32), modificationTime TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO jobsActive4 VALUES"
                " (1, 'running', now() AT TIME ZONE 'UTC' - interval '2 hours'),"
                " (2, 'running', now() AT TIME ZONE 'UTC' - interval '3 hours'),"
                " (3, 'running', now() AT TIME ZONE 'UTC' - interval '4 hours'),"
                " (4, 'running', now() AT TIME ZONE 'UTC'),"
                " (5, 'cancelled', now() AT TIME ZONE 'UTC' - interval '1 day')"))
        setting = cli(tmp_path, cfg, "config-value", "set", "panda_style", "MAX_JOBS", "2",
                      "--type", "int", "--descr", "jobs per pass")
        assert setting.returncode == 0, setting.stderr
        with running_master(cfg, tmp_path) as master:
            (event,) = master.wait_events(1, "start", "panda_style", timeout=30)
            assert master.stop() == 0
        assert event["got_lock"] is True
        assert event["max_jobs"] == 2 and event["unset"] == "fallback"
        assert event["status"] is None and event["rows"] == [[1, "running"], [2, "running"],
                                                             [3, "running"]]
        assert event["n_updated"] == 2
        assert event["del_status"] is None and event["n_deleted"] == 1
        assert event["bad"] == [-1, None]
        assert "querySQLS: database error" in master.log()
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT PandaID, jobStatus, modificationTime > now() AT TIME ZONE 'UTC'"
                " - interval '1 minute' FROM jobsActive4 ORDER BY PandaID")).all()
        assert [tuple(row) for row in rows] == [(1, "holding", True), (2, "holding", True),
                                                (3, "running", False), (4, "running", True)]
        shown = cli(tmp_path, cfg, "config-value", "list")
        assert shown.returncode == 0 and "MAX_JOBS" in shown.stdout and "@" in shown.stdout
    finally:
        engine.dispose()

"""docs/multi-server.md's ``db_url`` example, taken verbatim from the page, against a real
PostgreSQL with a real password: ``${PANDA_DAEMON_DB_PASSWORD}`` inside the URL is read
from the environment; unset, it is an error naming it; set to a wrong password, check-config
--connect and run both say the credentials are refused (a configuration error, exit 2), not
an outage that run would retry for ever.

The example names the host ``pandadb.example.org`` and no port: libpq's ``PGHOSTADDR`` and
``PGPORT`` (its defaults for what a URL leaves out) send it to the test's cluster, so the
configuration's text stays the page's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import REPO, running_master, script_env, write_config
from pg import PgCluster

VARIABLE = "PANDA_DAEMON_DB_PASSWORD"


def example_db_url() -> str:
    """The ``db_url = ...`` line of the page's first ``[daemon]`` example (the set-up one;
    the failover section's later one lists a primary and a standby), as written there."""
    text = (REPO / "docs" / "multi-server.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```ini\n(.*?)```", text, re.DOTALL)
    block = next(b for b in blocks if b.startswith("[daemon]\n") and "db_url" in b)
    (line,) = [line for line in block.splitlines() if line.startswith("db_url = ")]
    assert "${" + VARIABLE + "}" in line, line
    return line.split(" = ", 1)[1]


@pytest.fixture
def panda_db(pg_cluster: PgCluster) -> Iterator[str]:
    """The example's user (panda_daemon, with a password) owning the example's database
    (panda); yields the password."""
    password = "pw-" + uuid.uuid4().hex[:12]
    pg_cluster.sql(f"CREATE ROLE panda_daemon LOGIN PASSWORD '{password}'")
    try:
        pg_cluster.sql("CREATE DATABASE panda OWNER panda_daemon TEMPLATE template0")
        try:
            yield password
        finally:
            pg_cluster.drop_database("panda")
    finally:
        pg_cluster.sql("DROP ROLE IF EXISTS panda_daemon")


def env_for(tmp_path: Path, pg_cluster: PgCluster, password: str | None) -> dict[str, str]:
    env = script_env(tmp_path / "record.jsonl", PGHOSTADDR="127.0.0.1",
                     PGPORT=str(pg_cluster.port))
    env.pop(VARIABLE, None)
    if password is not None:
        env[VARIABLE] = password
    return env


def cli(cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg),
                           *args], capture_output=True, text=True, timeout=90, env=env,
                          cwd=cfg.parent, stdin=subprocess.DEVNULL)


def test_the_multi_server_example_runs_with_its_variable_and_says_what_is_wrong_without(
        tmp_path: Path, pg_cluster: PgCluster, panda_db: str) -> None:
    url = example_db_url()
    cfg = write_config(tmp_path, {"shared": {"module": "record", "period": 0.5, "sync": True}},
                       db_url=url)
    assert panda_db not in cfg.read_text()  # the password is only in the environment

    # unset: every command says which variable, before anything connects
    unset = env_for(tmp_path, pg_cluster, None)
    for args in (("check-config",), ("run",)):
        result = cli(cfg, unset, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert (f"key 'db_url': refers to environment variable ${VARIABLE}, which is not set"
                in result.stdout + result.stderr), (args, result.stdout, result.stderr)

    # set: the schema is created, check-config --connect agrees, a master runs the script
    good = env_for(tmp_path, pg_cluster, panda_db)
    upgraded = cli(cfg, good, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    checked = cli(cfg, good, "check-config", "--connect")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "postgresql+psycopg2://panda_daemon:***@pandadb.example.org/panda" in checked.stdout
    with running_master(cfg, tmp_path, extra_env={
            "PGHOSTADDR": "127.0.0.1", "PGPORT": str(pg_cluster.port), VARIABLE: panda_db}) \
            as master:
        master.wait_events(2, "end", "shared", timeout=30)
        assert master.stop() == 0
    assert panda_db not in master.log()

    # a wrong password: a configuration error for check-config --connect and for run alike
    wrong = env_for(tmp_path, pg_cluster, "not-the-password")
    checked = cli(cfg, wrong, "check-config", "--connect")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "the database refused the credentials" in checked.stdout
    assert "password authentication failed" in checked.stdout
    run = cli(cfg, wrong, "run")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "cannot start: the database refused the credentials" in run.stderr
    assert "password authentication failed" in run.stderr
    for output in (checked.stdout, checked.stderr, run.stderr):
        assert "not-the-password" not in output

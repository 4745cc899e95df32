"""``panda-daemon`` imports a command's module only for that command
(``pandaserver.commands.registry``): commands that do not talk to a database never import
SQLAlchemy, a driver or Alembic, only ``web`` imports the web stack; and each command still
parses, answers and exits as it did."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pandaserver.commands.main import build_parser
from pandaserver.commands.registry import COMMANDS
from pandaserver.config import load_config
from pandaserver.db.base.engine import make_engine
from pandaserver.db.base.schema import upgrade
from tests.harness import wait_for

# what a command must not import unless it needs it: the database layer, the web stack
HEAVY = ("sqlalchemy", "psycopg2", "pymysql", "alembic", "gunicorn", "prometheus_client",
         "pandaserver.db.base.engine", "pandaserver.web.app")
PROBE = """
import json, runpy, sys
sys.argv = ["panda-daemon", *json.loads(sys.argv[1])]
try:
    runpy.run_module("pandaserver.commands.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(OUT, "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[
        argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


@pytest.mark.parametrize("entry", COMMANDS, ids=lambda e: e.name)
def test_the_listed_help_is_the_commands_own(entry: object) -> None:
    name, helptext = entry.name, entry.help  # type: ignore[attr-defined]
    sub = _subparsers(build_parser(name))
    own = {a.dest: a.help for a in sub._choices_actions}
    assert own[name] == helptext
    assert list(own) == [e.name for e in COMMANDS]  # every command listed, in order
    full = sub.choices[name]
    assert any(a.option_strings == ["-h", "--help"] for a in full._actions)


def _run(tmp_path: Path, *argv: str, env: dict[str, str] | None = None
         ) -> tuple[int, list[str], str]:
    out = tmp_path / "probe.json"
    result = subprocess.run(
        [sys.executable, "-c", f"OUT = {str(out)!r}\n" + PROBE, json.dumps(argv)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PANDA_DAEMON_STATE_DIR": str(tmp_path / "state"), **(env or {})})
    assert out.exists(), result.stderr
    probe = json.loads(out.read_text())
    heavy = [m for m in probe["modules"] if m.startswith(HEAVY)]
    return probe["code"], heavy, result.stdout + result.stderr


@pytest.mark.parametrize(("argv", "code", "says"), [
    (("--help",), 0, "restart-workers"),
    (("--pidfile-is-not-global", "status"), 2, "unrecognized arguments"),
    (("cron2json", "--help"), 0, "--servers"),
    (("status", "--pidfile", "{tmp}/none.pid"), 3, "not running"),
], ids=["help", "bad-option", "cron2json-help", "status"])
def test_commands_without_a_database_import_none_of_it(
        tmp_path: Path, argv: tuple[str, ...], code: int, says: str) -> None:
    argv = tuple(a.replace("{tmp}", str(tmp_path)) for a in argv)
    got, heavy, output = _run(tmp_path, *argv)
    assert got == code, output
    assert says in output
    assert heavy == [], f"{' '.join(argv)} imported {sorted({m.split('.')[0] for m in heavy})}"


def _migrated(tmp_path: Path, extra: str = "") -> Path:
    """A config naming no database (plus ``extra`` lines of [daemon]), its default SQLite
    file migrated."""
    cfg = tmp_path / "panda_server.cfg"
    cfg.write_text("[daemon]\nenable = True\npackage = pandaserver.daemons.scripts\n" + extra
                   + 'config = {"dummy_test": {"period": 600}}\n', encoding="utf-8")
    engine = make_engine(load_config(str(cfg)), tmp_path / "state")
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return cfg


def test_a_database_command_imports_the_database_but_not_migrations_or_the_web(
        tmp_path: Path) -> None:
    cfg = _migrated(tmp_path)
    got, heavy, output = _run(tmp_path, "-c", str(cfg), "history")
    assert got == 0, output
    assert "no runs recorded" in output
    assert "sqlalchemy" in heavy
    assert not [m for m in heavy if m.startswith(("alembic", "gunicorn", "prometheus_client",
                                                  "psycopg2", "pymysql"))], heavy


@pytest.mark.parametrize(("argv", "says"), [
    (("pause", "dummy_test"), "recorded as command 1"),
    (("fleet",), "dummy_test  10m"),
    (("fleet", "--check"), "OK: 0 stale, 0 late of 1 scripts"),
], ids=["pause", "fleet", "fleet-check"])
def test_database_commands_on_sqlite_import_no_sqlalchemy(
        tmp_path: Path, argv: tuple[str, ...], says: str) -> None:
    """On a SQLite file ``pause`` & co. and ``fleet`` run their statements through sqlite3
    (pandaserver/db/direct/sqlitedirect.py): SQLAlchemy's import is most of their time."""
    cfg = _migrated(tmp_path)
    got, heavy, output = _run(tmp_path, "-c", str(cfg), *argv)
    assert got == 0, output
    assert says in output
    assert heavy == [], f"{' '.join(argv)} imported {sorted({m.split('.')[0] for m in heavy})}"


def test_a_master_imports_the_database_layer_only_after_its_first_run(tmp_path: Path) -> None:
    """A script that needs no lease is due at start: its run is handed over before the
    master imports SQLAlchemy (daemons/fleet/late.py), which it then does (the database side
    opens: its log line)."""
    cfg = _migrated(tmp_path, "n_proc = 1\n")
    log = tmp_path / "master.log"
    env = {**os.environ, "PANDA_DAEMON_STATE_DIR": str(tmp_path / "state"), "PANDA_NO_ROOT": "1"}
    with log.open("wb") as out:
        master = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "pandaserver.daemons.master", "-c",
             str(cfg), "--server-name", "t1", "--log-level", "DEBUG", "run"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(lambda: all(said in log.read_text() for said in (
            "panda.master: database: sqlite", "dummy_test run 1 dispatched")), 60,
            "the first run and the database side")
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(60)
    lines = log.read_text().splitlines()
    handed = next(i for i, line in enumerate(lines) if "dummy_test run 1 dispatched" in line)
    imported = [i for i, line in enumerate(lines)
                if line.startswith("import time:") and line.split("|")[-1].strip() == "sqlalchemy"]
    assert imported and imported[0] > handed, "SQLAlchemy was imported before the first run"

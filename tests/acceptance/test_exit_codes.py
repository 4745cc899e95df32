"""One exit-code table for every ``panda-daemon`` command (pandaserver/exitcodes.py,
docs/reference.md "Exit statuses"): the same failure gives the same status whichever
command meets it. The real command in a subprocess, ``python -m pandaserver.commands.main``.

The numbers are written out here, not imported: a renumbering of the table must show up
as a failing test and a "changed in this release" line, not pass silently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import script_env, write_config
from sqlalchemy import text

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade

CONFIG, SCHEMA, DATABASE = 2, 8, 9
CHECK_UNKNOWN = 3  # fleet --check: the monitoring-plugin convention, the stated exception

SCRIPTS = {"tick": {"module": "record", "period": 60}}
# the commands of issue 18's list, and the others that read the config the same way
NEEDS_CONFIG = [
    ("run",), ("check-config",), ("start",), ("history",), ("locks",), ("pause", "tick"),
    ("fleet",), ("web",), ("commands",),
    ("run-once", "tick"), ("unlock", "tick"), ("db", "upgrade"), ("logs", "tick"),
    ("restart",), ("reload",), ("resume", "tick"), ("drain", "srv"),
    ("config-value", "list"),
]
# the commands that open the database before they do anything (run and start refuse a
# schema; an unreachable database does not keep a master from starting: it starts in an
# outage and resumes by itself, docs/database.md)
OPEN_DATABASE = [
    ("history",), ("locks",), ("unlock", "tick"), ("pause", "tick"), ("resume", "tick"),
    ("run-now", "tick"), ("drain", "srv"), ("commands",), ("fleet",),
    ("config-value", "get", "comp", "KEY"),
]


def _env(tmp_path: Path) -> dict[str, str]:
    return script_env(tmp_path / "record.jsonl", PANDA_LOCK_DIR=str(tmp_path / "run"))


def _codes(tmp_path: Path, config: str, commands: list[tuple[str, ...]]
           ) -> dict[str, tuple[int, str]]:
    """Each command's exit status and what it said (stderr, then stdout)."""
    env = _env(tmp_path)
    found = {}
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "pandaserver.commands.main", "-c", config, *command],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
            stdin=subprocess.DEVNULL, env=env)
        found[" ".join(command)] = (result.returncode, result.stderr + result.stdout)
    return found


def _assert_all(found: dict[str, tuple[int, str]], expected: int) -> None:
    wrong = {command: (code, said.strip()[-300:]) for command, (code, said) in found.items()
             if code != expected}
    assert not wrong, f"expected exit {expected} from every command; these differ: {wrong}"


def test_a_missing_config_file_is_one_code_for_every_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent.cfg")
    found = _codes(tmp_path, missing, NEEDS_CONFIG)
    _assert_all(found, CONFIG)
    assert all("configuration file not found" in said for _, said in found.values()), found
    check = _codes(tmp_path, missing, [("fleet", "--check")])["fleet --check"]
    assert check[0] == CHECK_UNKNOWN, check


def test_a_config_naming_no_usable_database_is_one_code_for_every_command(
        tmp_path: Path) -> None:
    """``postgres://`` is no SQLAlchemy dialect: the config loads, its database cannot be
    used, and every command says so with the config's code (the database commands had
    their own, 5)."""
    cfg = write_config(tmp_path, SCRIPTS, db_url="postgres://panda@127.0.0.1:9/panda")
    commands = [c for c in NEEDS_CONFIG if c[0] not in ("logs", "reload")]  # no database
    _assert_all(_codes(tmp_path, str(cfg), commands), CONFIG)


def _newer_schema(database: Path) -> None:
    engine = engine_from_url(f"sqlite:///{database}")
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE daemon_schema SET version_num = '9999_future'"))
    finally:
        engine.dispose()


def test_a_schema_newer_than_the_code_is_one_code_for_every_command(tmp_path: Path) -> None:
    database = tmp_path / "future.sqlite"
    _newer_schema(database)
    cfg = write_config(tmp_path, SCRIPTS, db_url=f"sqlite:///{database}",
                       extra=f"[server]\nlogdir = {tmp_path / 'logs'}\n")
    commands = [("run",), ("run-once", "tick"), ("start",), ("check-config", "--connect"),
                ("db", "upgrade"), *OPEN_DATABASE]
    found = _codes(tmp_path, str(cfg), commands)
    _assert_all(found, SCHEMA)
    check = _codes(tmp_path, str(cfg), [("fleet", "--check")])["fleet --check"]
    assert check[0] == CHECK_UNKNOWN and "9999_future" in check[1], check
    assert not (tmp_path / "record.jsonl").exists(), "a script ran on a refused schema"


def test_an_unreachable_database_is_one_code_for_every_command(tmp_path: Path) -> None:
    """Nothing listens on port 9: the connection is refused at once."""
    cfg = write_config(tmp_path, SCRIPTS,
                       db_url="postgresql+psycopg2://panda:pw@127.0.0.1:9/panda")
    found = _codes(tmp_path, str(cfg), [("check-config", "--connect"), *OPEN_DATABASE])
    _assert_all(found, DATABASE)
    assert all("127.0.0.1:9" in said and "pw@" not in said for _, said in found.values()), found

"""PanDA's config table: ``tbuf.getConfigValue`` on SQLite, PostgreSQL and MariaDB (types
and fallbacks as PanDA's DBProxy.getConfigValue and TaskBuffer.getConfigValue), and the
``panda-daemon config-value`` command that manages the rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from harness import write_config
from sqlalchemy import Engine, insert, text

from pandaserver.commands import main as cli
from pandaserver.db.base.tables import panda_config
from pandaserver.exitcodes import RET_CONFIG, RET_FAILED, RET_OK, RET_SCHEMA
from pandaserver.taskbuffer import RunContext, TaskBuffer
from pandaserver.taskbuffer.configtable import ConfigStore


@pytest.fixture
def tbuf(db_engine: Engine) -> TaskBuffer:
    return TaskBuffer(db_engine, RunContext("reader", run_id=4))


def put(engine: Engine, component: str, key: str, value: str, type_name: str,
        vo: str | None = None, app: str = "pandaserver", value_json: str | None = None) -> None:
    """A row as PanDA's table may hold it (no check of the value)."""
    with engine.begin() as conn:
        conn.execute(insert(panda_config).values(app=app, component=component, key=key, vo=vo,
                                                 value=value, value_json=value_json,
                                                 type=type_name))


def test_values_are_converted_by_their_type(tbuf: TaskBuffer, db_engine: Engine) -> None:
    store = ConfigStore(db_engine)
    for key, value, kind in (("S", "text", "str"), ("I", "42", "int"), ("F", "2.5", "float"),
                             ("B", "True", "bool"), ("N", "no", "bool"),
                             ("J", '{"a": [1, 2]}', "json")):
        store.set(app="pandaserver", component="comp", key=key, vo=None, value=value,
                  type_name=kind, descr=None, who="tester@host")
    got = {key: tbuf.getConfigValue("comp", key) for key in "SIFBNJ"}
    assert got == {"S": "text", "I": 42, "F": 2.5, "B": True, "N": False,
                   "J": {"a": [1, 2]}}
    assert type(got["I"]) is int
    # PanDA's other spellings of the types, and its value_json column
    put(db_engine, "comp", "I2", "7", "INTEGER")
    put(db_engine, "comp", "B2", "true", "Boolean")
    put(db_engine, "comp", "J2", "", "json", value_json="[3]")
    assert (tbuf.getConfigValue("comp", "I2"), tbuf.getConfigValue("comp", "B2"),
            tbuf.getConfigValue("comp", "J2")) == (7, True, [3])
    # set replaces the row, and records who and when
    store.set(app="pandaserver", component="comp", key="I", vo=None, value="43",
              type_name="int", descr="the answer", who="other@host")
    (row,) = store.rows(component="comp", key="I")
    assert (row.value, row.descr, row.modified_by) == ("43", "the answer", "other@host")
    assert row.modified_at is not None and row.modified_at.utcoffset() is not None


def test_fallbacks_give_the_default(tbuf: TaskBuffer, db_engine: Engine,
                                    caplog: pytest.LogCaptureFixture) -> None:
    put(db_engine, "comp", "BADINT", "many", "int")
    put(db_engine, "comp", "BADJSON", "{", "json", value_json="{")
    put(db_engine, "comp", "ODD", "1", "complex")
    put(db_engine, "comp", "OTHERAPP", "1", "int", app="jedi")
    caplog.set_level(logging.WARNING, logger="pandaserver.taskbuffer.taskbuffer")
    assert tbuf.getConfigValue("comp", "MISSING") is None
    assert tbuf.getConfigValue("comp", "MISSING", default=5) == 5
    assert tbuf.getConfigValue("comp", "BADINT", default=5) == 5
    assert tbuf.getConfigValue("comp", "BADJSON", default=[]) == []
    assert tbuf.getConfigValue("comp", "ODD", default="d") == "d"
    assert tbuf.getConfigValue("comp", "OTHERAPP", default=0) == 0
    assert tbuf.getConfigValue("comp", "OTHERAPP", app="jedi", default=0) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(m.startswith("script=reader run=4 getConfigValue")
                                      for m in messages)
    assert "value 'many' is not a valid int" in messages[0]


def test_vo_rules(tbuf: TaskBuffer, db_engine: Engine) -> None:
    put(db_engine, "comp", "ATLASONLY", "1", "int", vo="atlas")
    put(db_engine, "comp", "EVERYONE", "2", "int")
    assert tbuf.getConfigValue("comp", "ATLASONLY", vo="atlas") == 1
    assert tbuf.getConfigValue("comp", "ATLASONLY", vo="cms", default=-1) == -1
    assert tbuf.getConfigValue("comp", "ATLASONLY") == 1  # no VO asked: any row
    assert tbuf.getConfigValue("comp", "EVERYONE", vo="cms") == 2


def test_a_missing_table_gives_the_default(tbuf: TaskBuffer, db_engine: Engine,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("DROP TABLE panda_config"))
    assert tbuf.getConfigValue("comp", "KEY", default="fallback") == "fallback"
    assert "cannot read the config table" in caplog.text
    # and the connection is usable at once
    assert tbuf.querySQL("SELECT 1", {}) == [(1,)]


# --- panda-daemon config-value (in-process, on SQLite) -----------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["-c", str(cfg), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_config_value_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDA_DAEMON_STATE_DIR", str(tmp_path / "state"))
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}},
                       db_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    code, _, err = run_cli(capsys, cfg, "config-value", "list")
    assert code == RET_SCHEMA and "db upgrade" in err and "Traceback" not in err
    assert run_cli(capsys, cfg, "db", "upgrade")[0] == RET_OK

    code, out, _ = run_cli(capsys, cfg, "config-value", "set", "watcher", "LIMIT", "12",
                           "--type", "int", "--descr", "rows per pass")
    assert code == RET_OK and "set by" in out
    assert run_cli(capsys, cfg, "config-value", "set", "watcher", "OPTS", '{"x": 1}',
                   "--type", "json", "--vo", "atlas")[0] == RET_OK
    assert run_cli(capsys, cfg, "config-value", "get", "watcher", "LIMIT")[:2] == (RET_OK,
                                                                                  "12\n")
    code, out, _ = run_cli(capsys, cfg, "config-value", "get", "watcher", "OPTS", "--json")
    row = json.loads(out)
    assert row["value_json"] == '{"x": 1}' and row["vo"] == "atlas" and row["modified_by"]
    code, out, _ = run_cli(capsys, cfg, "config-value", "list")
    assert code == RET_OK and "watcher" in out and "LIMIT" in out and "OPTS" in out
    assert "SET BY" in out and "@" in out

    # refusals: a value that is not of its type, a missing row, a bad name
    code, _, err = run_cli(capsys, cfg, "config-value", "set", "watcher", "LIMIT", "ten",
                           "--type", "int")
    assert code == RET_CONFIG and "value 'ten' is not a valid int" in err
    assert run_cli(capsys, cfg, "config-value", "get", "watcher", "LIMIT")[1] == "12\n"
    code, _, err = run_cli(capsys, cfg, "config-value", "get", "watcher", "NOPE")
    assert code == RET_FAILED and "scripts get their default" in err
    code, _, err = run_cli(capsys, cfg, "config-value", "get", "watcher", "OPTS", "--vo", "cms")
    assert code == RET_FAILED
    with pytest.raises(SystemExit) as usage:
        run_cli(capsys, cfg, "config-value", "set", "x" * 65, "K", "v")
    assert usage.value.code == RET_CONFIG
    assert "component must be 1 to 64 characters" in capsys.readouterr().err

    assert run_cli(capsys, cfg, "config-value", "delete", "watcher", "LIMIT")[0] == RET_OK
    assert run_cli(capsys, cfg, "config-value", "delete", "watcher", "LIMIT")[0] == RET_FAILED
    code, out, _ = run_cli(capsys, cfg, "config-value", "list", "--json")
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["OPTS"]

"""A script that dies inside a transaction leaves nothing behind for the next run on the
same worker: the real worker (``Worker._run``, in-process) on SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from harness import FIXTURES, write_config
from pg import url_text
from sqlalchemy import Engine, text

from pandaserver.daemons.base import protocol
from pandaserver.daemons.worker import process
from pandaserver.daemons.worker.tbuf import make_tbuf


def run(worker: process.Worker, parent: Any, run_id: int, mode: str) -> dict[str, Any]:
    worker._run({"name": "txn", "run": run_id, "module": "txn", "period": 60,
                 "arguments": [mode]})
    message = protocol.recv(parent)
    assert message["op"] == "done" and message["run"] == run_id
    return message


def test_a_run_that_dies_in_a_transaction_leaves_the_next_run_clean(
        db_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("CREATE TABLE t_txn (id INTEGER PRIMARY KEY, status VARCHAR(32))"))
        conn.execute(text("INSERT INTO t_txn (id, status) VALUES (1, 'new')"))
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("PANDA_TEST_RECORD", str(record))
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setattr(process, "set_title", lambda title: None)  # not this pytest's title
    cfg = write_config(tmp_path, {"txn": {"module": "txn", "period": 60}})
    parent, child = multiprocessing.Pipe()
    worker = process.Worker(child, 0, "test-server", config_path=str(cfg))
    worker.package = "testscripts"
    worker.tbuf = make_tbuf(str(cfg), url_text(db_engine.url))  # as the master's init does
    try:
        died = run(worker, parent, 1, "abort")
        assert died["outcome"] == protocol.FAILED and "died inside a transaction" in died["error"]
        healthy = run(worker, parent, 2, "healthy")
        assert healthy["outcome"] == protocol.OK, healthy["error"]
        (event,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert event["status"] is None and event["count"] == 1
        assert event["rows"] == [[1, "healthy"]]  # the dead run's insert was rolled back
        # the run's own statement timeout applied to it, and not to the runs after it
        assert event["timeout"] == 3 and worker.tbuf.statement_timeout == 600
    finally:
        # should the worker not have closed it, the dead run's connection would keep the
        # test's database from being dropped
        for conn in getattr(worker.modules.get("txn"), "KEPT", []):
            conn.invalidate()
        worker.tbuf.dispose()
        parent.close()
        child.close()


def test_the_bundled_examples(db_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """history_report reads the run history with querySQLS; config_report a value with
    getConfigValue (and its default without one)."""
    from pandaserver.daemons.scripts import config_report, history_report
    from pandaserver.db.base.servertime import db_now_plus
    from pandaserver.db.base.tables import daemon_run
    from pandaserver.taskbuffer import RunContext, TaskBuffer
    from pandaserver.taskbuffer.configtable import ConfigStore

    with db_engine.begin() as conn:
        for script, outcome, hours_ago in (("a", "ok", 1), ("a", "ok", 2), ("a", "failed", 3),
                                           ("b", "ok", 30)):
            conn.execute(daemon_run.insert().values(
                script=script, server="s1", outcome=outcome,
                started_at=db_now_plus(-3600.0 * hours_ago)))
    tbuf = TaskBuffer(db_engine, RunContext("report", run_id=1))
    caplog.set_level(logging.INFO)
    history_report.main(("history_report", "24"), tbuf=tbuf)
    assert "last 24 hours: a: failed 1, ok 2" in caplog.text and " b: " not in caplog.text
    config_report.main(("config_report",), tbuf=tbuf)
    assert "config_report MESSAGE = 'no value set' (str)" in caplog.text
    ConfigStore(db_engine).set(app="pandaserver", component="config_report", key="MESSAGE",
                               vo=None, value="3", type_name="int", descr=None, who="t@h")
    config_report.main(("config_report",), tbuf=tbuf)
    assert "config_report MESSAGE = 3 (int)" in caplog.text

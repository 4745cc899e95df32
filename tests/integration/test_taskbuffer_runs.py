"""A script that dies inside a transaction leaves nothing behind for the next run on the
same worker: the real worker (``Worker._run``, in-process) on SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

import json
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
    finally:
        worker.tbuf.dispose()
        parent.close()
        child.close()

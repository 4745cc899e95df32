"""A secret of the configuration quoted by a failed run's error: redacted before the
history row is written (a real master on SQLite and on PostgreSQL), and on every read path
(the pages, the timeline's tooltips, the JSON API, /metrics) even for a row an older
version wrote raw. The planted value is ``[server] panda_api_token``, as in the issue."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from harness import running_master, wait_for, write_config
from pg import url_text
from sqlalchemy import URL, Engine, insert, select

from pandaserver.config import load_config, secrets
from pandaserver.daemons.fleet.history.spool import encode
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_run
from pandaserver.db.stores.runcounts import count_ended
from pandaserver.db.stores.runrecords import FAILED, RunRecord
from pandaserver.web.app import FleetApp
from pandaserver.web.settings import WebSettings

SECRET = "Tok3n-Planted-4417"
PAGES = ("/", "/scripts", "/scripts/leaky", "/leases", "/api/fleet", "/api/scripts",
         "/api/scripts/leaky", "/metrics")


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    secrets.forget_all()  # only what the configuration registers counts
    yield
    secrets.forget_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    if request.param == "sqlite":
        return URL.create("sqlite", database=str(tmp_path / "panda_daemon.sqlite"))
    pg: URL = request.getfixturevalue("pg_url")
    return pg


@pytest.fixture
def engine(url: URL) -> Iterator[Engine]:
    made = engine_from_url(url)
    upgrade(made)  # a shared database is upgraded by `db upgrade`, never by a master
    yield made
    made.dispose()


def call(app: Callable[..., Any], path: str) -> str:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    seen: dict[str, str] = {}
    body = b"".join(app(environ, lambda status, headers: seen.update(s=status)))
    assert seen["s"] == "200 OK", (path, body[:500])
    return body.decode("utf-8")


def raw_errors(engine: Engine) -> list[tuple[str, str | None]]:
    """``(outcome, error)`` of every row, read with SQL (no redacting reader between)."""
    with engine.connect() as conn:
        rows = conn.execute(select(daemon_run.c.outcome, daemon_run.c.error)
                            .where(daemon_run.c.script == "leaky")).all()
    return [(row[0], row[1]) for row in rows]


def everything_written(root: Path) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace")
                     for path in sorted(root.rglob("*"))
                     if path.is_file() and path.suffix not in (".cfg", ".sqlite", ".sqlite-wal",
                                                               ".sqlite-shm"))


def test_a_failed_runs_secret_never_reaches_the_row_the_pages_or_the_api(
        tmp_path: Path, url: URL, engine: Engine) -> None:
    path = write_config(tmp_path, {"leaky": {"module": "leaky", "period": 60}},
                        db_url=url_text(url), heartbeat_interval=1,
                        extra=f"[server]\npanda_api_token = {SECRET}\n")
    with running_master(path, tmp_path, extra_env={"PANDA_TEST_LEAK": SECRET}) as master:
        wait_for(lambda: any(outcome == FAILED for outcome, _ in raw_errors(engine)), 30,
                 lambda: f"the failed run's row\n{master.log()[-3000:]}")
        app = FleetApp(load_config(str(path)), WebSettings())  # as `panda-daemon web` does
        app.reader.state_dir = tmp_path / "state"
        shown = {page: call(app, page) for page in PAGES}  # while the master is live
        assert master.stop() == 0
    (error,) = [error for outcome, error in raw_errors(engine) if outcome == FAILED]
    assert error is not None and "the API refused Authorization: Bearer *** as ***" in error
    assert SECRET not in error
    for page, body in shown.items():
        assert SECRET not in body, f"{page} shows the planted secret"
    assert "Bearer *** as ***" in shown["/scripts/leaky"]  # the runs table and the tooltip
    runs = json.loads(shown["/api/scripts/leaky"])["runs"]
    assert any("Bearer *** as ***" in (run["error"] or "") for run in runs)
    assert SECRET not in master.log()
    assert SECRET not in everything_written(tmp_path)  # status files, spool, records


def test_a_row_written_raw_is_redacted_on_every_read_path(
        tmp_path: Path, url: URL, engine: Engine) -> None:
    """A row holding the secret (written by an older version, or by hand): the pages, the
    timeline's tooltip and the API show it masked."""
    path = write_config(tmp_path, {"leaky": {"module": "leaky", "period": 60}},
                        db_url=url_text(url), extra=f"[server]\npanda_api_token = {SECRET}\n")
    with engine.begin() as conn:
        now = db_now(conn)
        conn.execute(insert(daemon_run).values(
            script="leaky", server=f"srv-{SECRET}", pid=1, started_at=now, ended_at=now,
            outcome=FAILED, error=f"Traceback\nRuntimeError: token {SECRET} refused",
            tally=1))
        count_ended(conn)  # in /metrics' counters too, as a writer (or 0007's upgrade) does
    app = FleetApp(load_config(str(path)), WebSettings())
    app.reader.state_dir = tmp_path / "state"
    shown = {page: call(app, page) for page in PAGES}
    for page, body in shown.items():
        assert SECRET not in body, f"{page} shows the planted secret"
    assert "RuntimeError: token *** refused" in shown["/scripts/leaky"]
    (run,) = json.loads(shown["/api/scripts/leaky"])["runs"]
    assert run["error"] == "Traceback\nRuntimeError: token *** refused"
    assert 'server="srv-***"' in shown["/metrics"]  # a label too


def test_the_spool_never_holds_a_secret() -> None:
    """What a stop keeps for the next start (the spool file) is redacted like the row."""
    secrets.register(SECRET)
    record = RunRecord(script="leaky", server="s", pid=1, outcome=FAILED,
                       error=f"RuntimeError: token {SECRET}", master_id="m", run_id=1)
    line = encode(record, 0.0)
    assert SECRET not in line and "RuntimeError: token ***" in line

"""A master whose database is the state directory's SQLite file opens its database side
after its first run (``pandaserver.daemons.fleet.late``): the schema is checked before any
run without SQLAlchemy (a refused one runs nothing), the first run's start is journaled
before the opening and written by it, and what keeps today's order (an older schema, a
pause in force, no script due at start without a lease) keeps it."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pandaserver import exitcodes
from pandaserver.commands import launch, prespawn
from pandaserver.commands import main as cli
from pandaserver.config import PandaConfig, load_config
from pandaserver.daemons.base import protocol
from pandaserver.daemons.fleet.history.journal import Journal, journal_path
from pandaserver.daemons.fleet.late import LATE_LIMIT, LateFleet, StartupError
from pandaserver.daemons.fleet.opening import open_fleet
from pandaserver.daemons.master import loop
from pandaserver.db.base.engine import database_url, make_engine
from pandaserver.db.base.schema import upgrade
from pandaserver.db.direct import schemacheck
from tests.unit.fakemaster import FakeClock, FakeContainment, FakeProcesses

SCRIPTS = '{"first": {"period": 600}, "shared": {"period": 600, "sync": true}}'


def config(tmp_path: Path, scripts: str = SCRIPTS, n_proc: int = 3) -> PandaConfig:
    path = tmp_path / "panda_server.cfg"
    path.write_text("\n".join(["[daemon]", "enable = True", "package = pandaserver.daemons.scripts",
                               f"n_proc = {n_proc}", f"config = {scripts}", ""]),
                    encoding="utf-8")
    return load_config(str(path))


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PANDA_DAEMON_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def migrated(cfg: PandaConfig) -> Path:
    engine = make_engine(cfg)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    path = schemacheck.default_sqlite(cfg)
    assert path is not None and path.is_file()
    return path


def test_the_url_the_workers_get_is_the_engines(state: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = schemacheck.default_sqlite(cfg)
    assert path is not None
    assert schemacheck.sqlite_url(path) == \
        database_url(cfg).render_as_string(hide_password=False)


def test_a_newer_schema_is_refused_before_the_master_is_built(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(tmp_path)
    path = migrated(cfg)
    with sqlite3.connect(path) as conn:  # a newer release migrated it, recording nothing
        conn.execute(f"UPDATE {schemacheck.VERSION_TABLE} SET version_num = '9999_future'")
    built: list[Any] = []
    monkeypatch.setattr(loop, "Master", lambda *a, **k: built.append(k))
    spawned: list[list[str]] = []

    class Early(prespawn.Prespawned):
        def start(self, argv: list[str]) -> None:
            spawned.append(argv)

        def discard(self) -> None:
            spawned.clear()

    monkeypatch.setattr(prespawn, "Prespawned", Early)
    from pandaserver.daemons.fleet import opening

    def no_opening(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the schema is refused before the database side is opened")

    monkeypatch.setattr(opening, "open_fleet", no_opening)
    code = cli.cmd_run(cfg, argparse.Namespace(server_name="s1", log_level="INFO"))
    assert code == exitcodes.RET_SCHEMA
    assert not built and not spawned  # no master, the early worker ended: nothing ran


def test_what_keeps_the_database_side_first(state: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = config(tmp_path)
    assert launch.late_fleet(cfg, "s1", clock) is None  # no file yet: made and migrated first
    path = migrated(cfg)
    assert isinstance(launch.late_fleet(cfg, "s1", clock), LateFleet)
    only_sync = config(tmp_path, '{"shared": {"period": 600, "sync": true}}')
    assert launch.late_fleet(only_sync, "s1", clock) is None  # its first run needs a lease
    with sqlite3.connect(path) as conn:  # a pause in force: read before any run
        conn.execute(f"INSERT INTO {schemacheck.HOLD_TABLE} (kind, name, server, command_id,"
                     " requested_by, since) VALUES ('pause', 'first', '*', 1, 'op', '2026-01-01')")
    assert launch.late_fleet(cfg, "s1", clock) is None
    with sqlite3.connect(path) as conn:
        conn.execute(f"DELETE FROM {schemacheck.HOLD_TABLE}")
        conn.execute(f"UPDATE {schemacheck.VERSION_TABLE} SET version_num = '0001'")
    assert launch.late_fleet(cfg, "s1", clock) is None  # older: upgraded by the opening
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {schemacheck.VERSION_TABLE} SET version_num = '9999_future'")
    with pytest.raises(StartupError) as refused:
        launch.late_fleet(cfg, "s1", clock)
    assert refused.value.code == exitcodes.RET_SCHEMA and "newer" in str(refused.value)


def test_the_first_run_is_journaled_then_written_by_the_late_opening(
        state: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = migrated(cfg)
    clock = FakeClock()
    journal = Journal(journal_path(state, "here"), clock.monotonic)
    opened: list[str] = []

    def opener(master_id: str, kept: Journal) -> Any:
        opened.append(journal.path.read_text())  # what the journal held by then
        return open_fleet(cfg, "here", clock, master_id=master_id, journal=kept)

    late = LateFleet.make(opener, schemacheck.sqlite_url(path), "here", journal)
    master = loop.Master(cfg.daemon, server="here", clock=clock, late=late,
                         processes=FakeProcesses(), containment=FakeContainment())
    master.begin(clock.now)
    master.turn()  # the workers spawn; nothing is due on a ready worker yet
    assert master.fleet is None and not opened
    slot = master.pool.slots[1]
    protocol.send(slot.proc.worker, "ready", import_errors={})  # type: ignore[attr-defined]
    master.pool.read_messages(slot)
    master.turn()
    run = slot.run
    assert run is not None and run.script == "first"  # the sync script waits for its lease
    (journaled,) = opened  # opened in the turn of the first hand-over, the start kept first
    assert late.runs.master_id in journaled and '"script":"first"' in journaled
    assert master.fleet is not None and master.fleet.master_id == late.runs.master_id
    protocol.send(slot.proc.worker, "done", run=run.id,  # type: ignore[attr-defined]
                  outcome=protocol.OK, error=None, started=clock.now, ended=clock.now)
    master.pool.read_messages(slot)
    master.fleet.defer_calls(False)  # as the master's stop does
    master.fleet.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT script, outcome, master_id FROM daemon_run").fetchall()
    assert rows == [("first", "ok", late.runs.master_id)]


def test_with_no_run_started_the_database_side_opens_at_the_late_limit(
        state: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = migrated(cfg)
    clock = FakeClock()
    journal = Journal(journal_path(state, "here"), clock.monotonic)
    late = LateFleet.make(lambda master_id, kept: open_fleet(
        cfg, "here", clock, master_id=master_id, journal=kept),
        schemacheck.sqlite_url(path), "here", journal)
    master = loop.Master(cfg.daemon, server="here", clock=clock, late=late,
                         processes=FakeProcesses(), containment=FakeContainment())
    master.begin(clock.now)
    wake = master.turn()  # worker 1 never becomes ready (its imports hang, say)
    assert list(master.pool.slots) == [1]  # it boots alone until the first hand-over
    # the loop sleeps while worker 1 boots (it does not spin: the spawns it holds back are
    # not due), and wakes by the late limit
    assert master.fleet is None and wake is not None and clock.now < wake <= clock.now + LATE_LIMIT
    clock.now += LATE_LIMIT
    master.turn()
    assert master.fleet is not None  # opened anyway: the sync script may ask from now on
    master.turn()
    assert sorted(master.pool.slots) == list(range(1, cfg.daemon.n_proc + 1))
    master.fleet.defer_calls(False)
    master.fleet.close()

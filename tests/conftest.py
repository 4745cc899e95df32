"""Shared fixtures: a real PostgreSQL cluster and a real MariaDB server per session (per
pytest-xdist worker in a parallel run), a fresh database per test, and ``db_engine``, which
runs a test on SQLite, PostgreSQL and MariaDB (the ``mysql`` backend).

A database with the current schema is migrated once per session and backend (the
template) and copied for each test that asks for one (``db_engine``, ``pg_engine``):
``CREATE DATABASE ... TEMPLATE`` on PostgreSQL, the template's tables re-created and their
rows copied on MariaDB, the file copied on SQLite. Tests of the migrations themselves use
``empty_engine`` and migrate it; tests/integration/test_template_databases.py checks that a
copy is what a migration makes.

Each server is started only when a test asks for it. If it cannot start, those tests
FAIL with the reason (they are never skipped: a skipped lease test proves nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from mysql import MariaDbServer, MySqlUnavailable
from pg import SCRATCH_VAR, PgCluster, PgUnavailable, url_text
from sqlalchemy import URL, Engine

from pandaserver.config import DaemonSettings, PandaConfig
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade

BACKENDS = ["sqlite", "postgresql", "mysql"]
XDIST_COUNT_VAR = "PYTEST_XDIST_WORKER_COUNT"  # set by pytest-xdist in its workers
SERIAL_WORKERS = 2  # the serial pass: two tests at a time at most, one per core


def pytest_configure(config: pytest.Config) -> None:
    """Before any test: a scratch directory for the database servers, and the guard that
    ends every process the session started and removes the directory when pytest ends, even
    by SIGKILL (tests/guard.py). A pytest run by a test gets a guard of its own, and so does
    each worker of a parallel run (pytest-xdist), each with a cgroup of its own where one
    can be made."""
    import guard

    scratch = Path(tempfile.mkdtemp(prefix="panda-tests-"))
    scratch.chmod(0o755)  # the servers run as their own users below it
    os.environ[SCRATCH_VAR] = str(scratch)
    guard.start(scratch)


LAYERS = ("acceptance", "integration", "unit")  # slowest first
DURATIONS = Path(__file__).resolve().parent / "durations.json"  # tests/durations.py writes it
NEW_TEST_SECONDS = 5.0  # a test not in it yet: as if it took this long


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a parallel run, hand out the slow tests first: the slow layers first and, within
    a layer, the tests that took longest last time (tests/durations.json): a minute-long
    test picked up last would run on after every other worker has finished. (Every worker
    collects the same order: xdist requires it.)"""
    if XDIST_COUNT_VAR not in os.environ:
        return
    try:
        seconds: dict[str, float] = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seconds = {}

    def order(item: pytest.Item) -> tuple[int, float]:
        parts = item.path.parts
        layer = next((i for i, name in enumerate(LAYERS) if name in parts), len(LAYERS))
        default = NEW_TEST_SECONDS if layer == 0 else 0.0
        return layer, -seconds.get(item.nodeid, default)

    items.sort(key=order)  # stable: tests of equal weight keep their order


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``serial`` fails at once in a run of more than ``SERIAL_WORKERS``
    processes, and one marked ``alone`` in any parallel run, instead of running beside others
    where its timing bound would prove less (tests/run-all.sh gives each its own pass)."""
    workers = int(os.environ.get(XDIST_COUNT_VAR, "1"))
    for mark, most, how in (("alone", 1, "-m alone and without -n"),
                            ("serial", SERIAL_WORKERS, f"-m serial and -n {SERIAL_WORKERS} at most")):
        if item.get_closest_marker(mark) and workers > most:
            pytest.fail(f"{item.nodeid} is marked {mark}: it must not run beside {workers}"
                        f" parallel workers; run it with {how} (tests/run-all.sh does)",
                        pytrace=False)


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def create_database(self, name: str) -> URL: ...

    def drop_database(self, name: str) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


def _running(what: str, make: Callable[[], ServerT],
             errors: tuple[type[BaseException], ...]) -> Iterator[ServerT]:
    """Start a throwaway server for the session; a server that cannot start FAILS the test."""
    try:
        server = make()
    except errors as exc:
        pytest.fail(f"{what} is needed for this test and cannot start: {exc}", pytrace=False)
    try:
        server.start()
    except BaseException as exc:  # whatever went wrong, a server that got started is stopped
        server.stop()
        if isinstance(exc, errors):
            pytest.fail(f"{what} is needed for this test and cannot start: {exc}",
                        pytrace=False)
        raise
    try:
        yield server
    finally:
        server.stop()


def _fresh_database(server: _Server) -> Iterator[URL]:
    """A fresh, empty database on ``server`` for one test (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


SCHEMA_FIXTURES = ("db_engine", "pg_engine")  # the fixtures that want the current schema
_COPIES: set[str] = set()  # PostgreSQL databases made as copies of the template at once


def _wants_schema(request: pytest.FixtureRequest) -> bool:
    return any(name in request.fixturenames for name in SCHEMA_FIXTURES)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    yield from _running("PostgreSQL", PgCluster,
                        (PgUnavailable, OSError, subprocess.SubprocessError))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, pg_cluster: PgCluster) -> Iterator[URL]:
    """A fresh database; for a test that asks for the schema, made at once as a copy of
    the template (not made empty and then replaced by one)."""
    if not _wants_schema(request):
        yield from _fresh_database(pg_cluster)
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name, request.getfixturevalue("pg_template"))
    _COPIES.add(name)
    yield url
    _COPIES.discard(name)
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MariaDbServer]:
    yield from _running("MariaDB", MariaDbServer,
                        (MySqlUnavailable, OSError, subprocess.SubprocessError))


@pytest.fixture
def mysql_url(mysql_server: MariaDbServer) -> Iterator[URL]:
    yield from _fresh_database(mysql_server)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL or MariaDB
    database."""
    if request.param == "sqlite":
        return URL.create("sqlite", database=str(tmp_path / "panda_daemon.sqlite"))
    url: URL = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")
    return url


@pytest.fixture
def make_engine_for() -> Iterator[Callable[[URL], Engine]]:
    """Build engines with production settings; all disposed at teardown."""
    engines: list[Engine] = []

    def make(url: URL) -> Engine:
        engine = engine_from_url(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def empty_engine(db_url: URL, make_engine_for: Callable[[URL], Engine]) -> Engine:
    return make_engine_for(db_url)


TEMPLATE = "panda_template"  # the migrated database of a session, on each server


def _migrate(url: URL) -> None:
    engine = engine_from_url(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # no connection may be left to a database that is copied


@pytest.fixture(scope="session")
def pg_template(pg_cluster: PgCluster) -> str:
    """A PostgreSQL database migrated to the current schema, for copies."""
    _migrate(pg_cluster.create_database(TEMPLATE))
    pg_cluster.seal_template(TEMPLATE)
    return TEMPLATE


@pytest.fixture(scope="session")
def mysql_template(mysql_server: MariaDbServer) -> str:
    """A MariaDB database migrated to the current schema, for copies."""
    _migrate(mysql_server.create_database(TEMPLATE))
    mysql_server.seal_template(TEMPLATE)
    return TEMPLATE


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the current schema, for copies."""
    path = tmp_path_factory.mktemp("template") / "panda_daemon.sqlite"
    _migrate(URL.create("sqlite", database=str(path)))
    conn = sqlite3.connect(path)
    try:  # everything in the file itself, nothing left in its write-ahead log
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


def _fill_migrated(request: pytest.FixtureRequest, url: URL) -> None:
    """Make the fresh, empty, unused database at ``url`` a copy of its backend's template:
    what ``upgrade`` would make of it, without running the migrations again."""
    backend = url.get_backend_name()
    if not url.database:
        raise ValueError(f"{url!r} names no database to fill")
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        if Path(url.database).exists():
            raise FileExistsError(f"{url.database} exists: only a new file is filled")
        shutil.copyfile(template, url.database)
    elif backend == "postgresql":
        if url.database in _COPIES:  # pg_url made it a copy already
            return
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        cluster.copy_template(request.getfixturevalue("pg_template"), url.database)
    elif backend == "mysql":
        server: MariaDbServer = request.getfixturevalue("mysql_server")
        server.copy_template(request.getfixturevalue("mysql_template"), url.database)
    else:
        raise ValueError(f"no template database for the backend {backend!r}")


@pytest.fixture
def fill_migrated(request: pytest.FixtureRequest) -> Callable[[URL], None]:
    """``fill(url)``: make the fresh, empty database at ``url`` a copy of the template."""
    return lambda url: _fill_migrated(request, url)


@pytest.fixture
def db_engine(fill_migrated: Callable[[URL], None], db_url: URL,
              empty_engine: Engine) -> Engine:
    """An engine on a database with the current schema, on each backend (a copy of the
    session's template; ``db_url`` names the same database)."""
    fill_migrated(db_url)
    return empty_engine


@pytest.fixture
def pg_engine(fill_migrated: Callable[[URL], None], pg_url: URL,
              make_engine_for: Callable[[URL], Engine]) -> Engine:
    """PostgreSQL only, with the current schema (a copy of the session's template)."""
    fill_migrated(pg_url)
    return make_engine_for(pg_url)


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., PandaConfig]:
    """Build a PandaConfig whose [daemon] db_url points at a URL (other keys as given)."""

    def build(url: URL | str, **daemon: object) -> PandaConfig:
        path = tmp_path / "panda_server.cfg"
        text = url_text(url) if isinstance(url, URL) else url
        settings = DaemonSettings(path=str(path), db_url=text, **daemon)  # type: ignore[arg-type]
        return PandaConfig(path=path, daemon=settings, server={})

    return build

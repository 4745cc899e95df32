"""Shared fixtures: a real PostgreSQL cluster and a real MariaDB server per session, a
fresh database per test, and ``db_engine``, which runs a test on SQLite, PostgreSQL and
MariaDB (the ``mysql`` backend).

Each server is started only when a test asks for it. If it cannot start, those tests
FAIL with the reason (they are never skipped: a skipped lease test proves nothing).
"""

from __future__ import annotations

import os
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
from pandaserver.db.engine import engine_from_url
from pandaserver.db.schema import upgrade

BACKENDS = ["sqlite", "postgresql", "mysql"]


def pytest_configure(config: pytest.Config) -> None:
    """Before any test: a scratch directory for the database servers, and the guard that
    ends every process the session started and removes the directory when pytest ends, even
    by SIGKILL (tests/guard.py). A pytest run by a test gets a guard of its own."""
    import guard

    scratch = Path(tempfile.mkdtemp(prefix="panda-tests-"))
    scratch.chmod(0o755)  # the servers run as their own users below it
    os.environ[SCRATCH_VAR] = str(scratch)
    guard.start(scratch)


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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    yield from _running("PostgreSQL", PgCluster,
                        (PgUnavailable, OSError, subprocess.SubprocessError))


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[URL]:
    yield from _fresh_database(pg_cluster)


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


@pytest.fixture
def db_engine(empty_engine: Engine) -> Engine:
    """An engine on a database with the current schema, on each backend."""
    upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def pg_engine(pg_url: URL, make_engine_for: Callable[[URL], Engine]) -> Engine:
    """PostgreSQL only, with the current schema."""
    engine = make_engine_for(pg_url)
    upgrade(engine)
    return engine


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., PandaConfig]:
    """Build a PandaConfig whose [daemon] db_url points at a URL (other keys as given)."""

    def build(url: URL | str, **daemon: object) -> PandaConfig:
        path = tmp_path / "panda_server.cfg"
        text = url_text(url) if isinstance(url, URL) else url
        settings = DaemonSettings(path=str(path), db_url=text, **daemon)  # type: ignore[arg-type]
        return PandaConfig(path=path, daemon=settings, server={})

    return build

"""The operator's statements on SQLite through ``sqlite3`` are the store's own: the
checked-in texts are the Core statements compiled again, and a failure says what the
SQLAlchemy path says (pandaserver/db/direct/sqlitedirect.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError

from pandaserver.config import PandaConfig
from pandaserver.db.base.engine import describe_db_error
from pandaserver.db.direct.operator_sqlite import SQLITE
from pandaserver.db.direct.sqlitedirect import describe_error, sqlite_file
from pandaserver.db.stores.operator_commands import operator_statements


def test_the_checked_in_sqlite_texts_are_the_core_statements_compiled() -> None:
    compiled = {name: str(statement.compile(dialect=sqlite.dialect(paramstyle="named")))
                for name, statement in operator_statements().items()}
    assert compiled == SQLITE, ("regenerate operator_sqlite.SQLITE from"
                                " operator_commands.operator_statements()")


def test_a_sqlite_error_is_described_as_the_sqlalchemy_path_describes_it(tmp_path: Path
                                                                         ) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    for orig in (sqlite3.OperationalError("database is locked"),
                 sqlite3.OperationalError("unable to open database file"),
                 sqlite3.DatabaseError("file is not a database\nsecond line")):
        wrapped = OperationalError("SELECT 1", {}, orig)
        assert describe_error(orig, url) == describe_db_error(wrapped, url)


def test_only_an_existing_plain_sqlite_file_takes_the_sqlite3_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        config_for: Callable[..., PandaConfig]) -> None:
    monkeypatch.setenv("PANDA_DAEMON_STATE_DIR", str(tmp_path / "state"))
    existing = tmp_path / "fleet.sqlite"
    existing.write_bytes(b"")

    def chosen(url: str) -> Path | None:
        return sqlite_file(config_for(url))  # tests/conftest.py: a config with this db_url

    assert chosen("") is None  # the default file does not exist yet: SQLAlchemy makes it
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "panda_daemon.sqlite").write_bytes(b"")
    assert chosen("") == tmp_path / "state" / "panda_daemon.sqlite"
    assert chosen(f"sqlite:///{existing}") == existing
    for other in (f"sqlite:///{tmp_path / 'missing.sqlite'}", f"sqlite:///{existing}?timeout=3",
                  "sqlite:///:memory:", "sqlite://", "postgresql+psycopg2://u:p@h/db",
                  f"sqlite+pysqlite:///{existing}"):
        assert chosen(other) is None, other

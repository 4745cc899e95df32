"""The suite's copied databases are what a migration makes: ``db_engine`` hands out a copy
of a database migrated once per session (tests/conftest.py), and a test on it proves only
what it would prove on a database that ``upgrade`` made itself."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, Engine, inspect, text
from sqlalchemy.sql import ClauseElement

from pandaserver.db.base.schema import upgrade
from pandaserver.db.base.tables import VERSION_TABLE


def _plain(value: Any) -> Any:
    """``value`` made of plain data (an index's SQL expression compares by its text)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, ClauseElement):
        return str(value)
    return value


def _shape(engine: Engine) -> dict[str, Any]:
    """Everything the schema says, table by table, the recorded revision, and the backend's
    own text of its schema where it has one."""
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        insp = inspect(conn)
        assert not insp.get_view_names(), "views: the MariaDB template copy skips them"
        for table in sorted(insp.get_table_names()):
            found[table] = _plain({
                "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"),
                             c.get("autoincrement")) for c in insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table),
                "fks": insp.get_foreign_keys(table),
                "indexes": insp.get_indexes(table),
                "unique": insp.get_unique_constraints(table),
                "checks": insp.get_check_constraints(table),
            })
            if engine.dialect.name == "mysql":
                found[table]["ddl"] = conn.exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one()
        found[VERSION_TABLE]["rows"] = conn.execute(
            text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
        if engine.dialect.name == "sqlite":
            found["sqlite_master"] = conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").all()
            found["journal_mode"] = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    return found


@pytest.fixture
def another_url(request: pytest.FixtureRequest, db_url: URL, tmp_path: Path) -> Iterator[URL]:
    """A second fresh, empty database on the backend of ``db_url``."""
    backend = db_url.get_backend_name()
    if backend == "sqlite":
        yield URL.create("sqlite", database=str(tmp_path / "another.sqlite"))
        return
    server = request.getfixturevalue("pg_cluster" if backend == "postgresql" else
                                     "mysql_server")
    name = f"another_{uuid.uuid4().hex[:12]}"
    yield server.create_database(name)
    server.drop_database(name)


def test_a_copy_of_the_template_is_what_upgrade_makes(
        db_engine: Engine, another_url: URL, make_engine_for: Callable[[URL], Engine]) -> None:
    made_here = make_engine_for(another_url)
    assert upgrade(made_here)[0] is None  # it was empty: the migrations ran on it
    copy, made = _shape(db_engine), _shape(made_here)
    assert len(made) > 3, made  # the migrations made tables at all
    assert copy == made


def test_each_copy_is_its_own(db_engine: Engine, another_url: URL,
                              fill_migrated: Callable[[URL], None],
                              make_engine_for: Callable[[URL], Engine]) -> None:
    head = upgrade(db_engine)
    assert head[0] == head[1], "a copy was not at the head revision"
    with db_engine.begin() as conn:  # what one test writes...
        conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    fill_migrated(another_url)  # ...the next copy does not see
    with make_engine_for(another_url).connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == \
            [(head[1],)]

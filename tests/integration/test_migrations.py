"""Schema migrations and version checks; where the engine comes from; passwords kept out
of messages. On SQLite and PostgreSQL.

(The configuration-to-URL tests need no database; they live here with the engine they
configure.)
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import URL, Engine, inspect, text
from sqlalchemy.exc import OperationalError

from pandaserver.commands.database import (
    add_db_subcommands,
    cmd_db_upgrade,
    cmd_history,
    cmd_locks,
    cmd_unlock,
)
from pandaserver.config import DaemonSettings, PandaConfig
from pandaserver.db.base import engine as engine_mod
from pandaserver.db.base import schema
from pandaserver.db.base.engine import (
    DatabaseConfigError,
    database_url,
    default_state_dir,
    describe_db_error,
    engine_from_url,
    make_engine,
    safe_url,
)
from pandaserver.db.base.schema import (
    SchemaError,
    check_schema,
    current_revision,
    ensure_schema,
    head_revision,
    known_revisions,
    upgrade,
)
from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import OWNED_TABLES, VERSION_TABLE, daemon_schema_compat, metadata
from pandaserver.exitcodes import RET_CONFIG, RET_DATABASE, RET_SCHEMA

# --- migrations ---------------------------------------------------------------------------


def test_upgrade_from_empty_creates_every_table(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    assert upgrade(empty_engine) == (None, head_revision())
    assert current_revision(empty_engine) == head_revision() == check_schema(empty_engine)
    names = set(inspect(empty_engine).get_table_names())
    assert {t.name for t in OWNED_TABLES} | {VERSION_TABLE} <= names
    assert "alembic_version" not in names  # never collides with the PanDA database's own
    assert upgrade(empty_engine) == (head_revision(), head_revision())


def test_migrations_create_exactly_the_tables_of_tables_py(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        assert compare_metadata(context, metadata) == []


def test_check_schema_refuses_a_newer_revision(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
    for attempt in (check_schema, upgrade, lambda e: ensure_schema(e, auto_upgrade=True)):
        with pytest.raises(SchemaError) as caught:
            attempt(db_engine)
        assert caught.value.kind == "newer"
        assert str(caught.value) == (
            f"database schema 9999_future is newer than this panda-daemon knows"
            f" (head {head_revision()}) and does not record which older code works with it"
            " (it was migrated by a release before rolling upgrades, or by hand); upgrade"
            " panda-daemon on this server to a release that knows schema 9999_future"
        )
    assert current_revision(db_engine) == "9999_future"  # untouched


def record_compat(engine: Engine, revision: str, oldest_code: str) -> None:
    """Stamp ``revision`` as a newer release's `db upgrade` does: the revision, and the
    oldest code that works with it."""
    with engine.begin() as conn:
        conn.execute(daemon_schema_compat.insert().values(
            revision=revision, oldest_code=oldest_code, recorded_at=db_now_expr(),
            recorded_by="a newer panda-daemon"))
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :rev"), {"rev": revision})


def test_a_newer_revision_recorded_as_working_with_this_code_is_used_untouched(
        db_engine: Engine, config_for: Callable[..., PandaConfig],
        capsys: pytest.CaptureFixture[str]) -> None:
    # a newer release migrated it with expand steps only: this code's head still works
    record_compat(db_engine, "9999_future", head_revision())
    assert check_schema(db_engine) == "9999_future"
    assert ensure_schema(db_engine, auto_upgrade=True) == "9999_future"
    assert upgrade(db_engine) == ("9999_future", "9999_future")
    assert current_revision(db_engine) == "9999_future"  # untouched
    config = config_for(db_engine.url)
    assert cmd_db_upgrade(config, argparse.Namespace()) == 0
    assert (f"schema 9999_future is newer than this panda-daemon (head {head_revision()}) and"
            " records that it works with it: nothing to do") in capsys.readouterr().out
    assert cmd_locks(config, argparse.Namespace(json=False)) == 0  # commands work on it


def test_a_newer_revision_that_needs_newer_code_is_refused_naming_both(
        db_engine: Engine) -> None:
    # a contract step: only code of 9998_contract or later works with it
    record_compat(db_engine, "9999_future", "9998_contract")
    for attempt in (check_schema, upgrade, lambda e: ensure_schema(e, auto_upgrade=True)):
        with pytest.raises(SchemaError) as caught:
            attempt(db_engine)
        assert caught.value.kind == "newer"
        assert str(caught.value) == (
            f"database schema 9999_future is newer than this panda-daemon knows"
            f" (head {head_revision()}) and works only with code of schema 9998_contract or"
            " later; upgrade panda-daemon on this server to a release that knows schema"
            " 9998_contract"
        )
    assert current_revision(db_engine) == "9999_future"  # untouched


def test_check_schema_on_an_empty_database_says_to_upgrade(empty_engine: Engine) -> None:
    with pytest.raises(SchemaError, match="run `panda-daemon db upgrade`") as caught:
        check_schema(empty_engine)
    assert caught.value.kind == "missing"


def upgrade_to(engine: Engine, revision: str) -> None:
    """Migrate to ``revision`` only, as an older panda-daemon's `db upgrade` left it."""
    with engine.begin() as conn:
        command.upgrade(schema._config(conn), revision)


def test_an_older_revision_says_to_run_db_upgrade(empty_engine: Engine) -> None:
    oldest, head = known_revisions()[-1], head_revision()
    assert oldest != head, "this test needs a schema with two revisions or more"
    upgrade_to(empty_engine, oldest)
    assert current_revision(empty_engine) == oldest
    with pytest.raises(SchemaError) as caught:
        check_schema(empty_engine)
    assert caught.value.kind == "older"
    assert str(caught.value) == (
        f"database schema {oldest} is older than this panda-daemon needs (head {head});"
        " run `panda-daemon db upgrade`"
    )
    if empty_engine.dialect.name != "sqlite":  # a shared database: the operator's decision
        with pytest.raises(SchemaError, match="is older than"):
            ensure_schema(empty_engine)
        assert current_revision(empty_engine) == oldest  # untouched
    assert upgrade(empty_engine) == (oldest, head)
    assert check_schema(empty_engine) == head


def test_ensure_schema_upgrades_by_itself_only_on_sqlite(empty_engine: Engine) -> None:
    if empty_engine.dialect.name == "sqlite":
        assert ensure_schema(empty_engine) == head_revision()
    else:
        with pytest.raises(SchemaError, match="db upgrade"):
            ensure_schema(empty_engine)
        assert current_revision(empty_engine) is None
        assert ensure_schema(empty_engine, auto_upgrade=True) == head_revision()
    assert check_schema(empty_engine) == head_revision()


def test_concurrent_upgrades_are_serialized(db_url: URL) -> None:
    engines = [engine_from_url(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    outcomes: list[object] = []

    def run(engine: Engine) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(upgrade(engine))
        except Exception as exc:  # collected and asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        head = head_revision()
        assert sorted(outcomes, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)
        with engines[0].connect() as conn:
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [(head,)]
    finally:
        for engine in engines:
            engine.dispose()


def test_upgrade_runs_in_a_transaction_even_on_an_autocommit_engine(db_url: URL) -> None:
    engine = engine_from_url(db_url, autocommit=True, pre_ping=False)
    try:
        assert upgrade(engine) == (None, head_revision())
        assert check_schema(engine) == head_revision()
    finally:
        engine.dispose()


def test_statement_timeout_bounds_statements_on_postgresql(pg_url: URL) -> None:
    engine = engine_from_url(pg_url, statement_timeout=0.2)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "200ms"
            with pytest.raises(OperationalError, match="statement timeout"):
                conn.exec_driver_sql("SELECT pg_sleep(5)")
    finally:
        engine.dispose()


def test_sqlite_engine_shares_the_file_in_wal_mode(tmp_path: Path) -> None:
    engine = engine_from_url(URL.create("sqlite", database=str(tmp_path / "sub" / "x.sqlite")))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


# --- passwords ------------------------------------------------------------------------------

SECRET = "Zq9-secret-pw"


def connect_error(url: URL) -> OperationalError:
    engine = engine_from_url(url)
    try:
        with pytest.raises(OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert SECRET not in repr(engine)
    return caught.value


def test_wrong_port_error_never_shows_the_password() -> None:
    url = URL.create("postgresql+psycopg2", username="panda", password=SECRET,
                     host="127.0.0.1", port=1, database="panda")
    message = describe_db_error(connect_error(url), url)
    assert SECRET not in message
    assert message.startswith("database postgresql+psycopg2://panda:***@127.0.0.1:1/panda: ")
    assert "OperationalError" in message and "127.0.0.1" in message and "\n" not in message
    assert SECRET not in safe_url(url)


def test_wrong_password_error_never_shows_it(pg_url: URL) -> None:
    url = pg_url.set(password=SECRET)
    message = describe_db_error(connect_error(url), url)
    assert "password authentication failed" in message and SECRET not in message


def test_secrets_are_masked_in_driver_text_too() -> None:
    exc = psycopg2.OperationalError(f"bad dsn: host=h password={SECRET} user=u")
    message = describe_db_error(exc, f"postgresql://u:{SECRET}@h/db")
    assert SECRET not in message and "password=***" in message
    assert safe_url("mysql://u:p%40ss@h/db") == "mysql://u:***@h/db"
    assert safe_url(f"not a url: sqlite://u:{SECRET}@x") == "not a url: sqlite://u:***@x"


# --- configuration to URL -------------------------------------------------------------------

def cfg(tmp_path: Path, db_url: str = "", **server: str) -> PandaConfig:
    path = tmp_path / "panda_server.cfg"
    return PandaConfig(path=path, daemon=DaemonSettings(path=str(path), db_url=db_url),
                       server=dict(server))


def test_db_url_wins_over_server_keys(tmp_path: Path) -> None:
    url = database_url(cfg(tmp_path, "sqlite:////srv/x.sqlite", backend="postgres", dbhost="h"))
    assert url.drivername == "sqlite" and url.database == "/srv/x.sqlite"


def test_server_keys_with_env_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDA_DB_PASSWORD", SECRET)
    url = database_url(cfg(tmp_path, backend="postgres", dbhost="db.example", dbport="6432",
                           dbuser="panda", dbpasswd="$PANDA_DB_PASSWORD", dbname="pandadb"))
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+psycopg2", "db.example", 6432, "panda", "pandadb")
    assert url.password == SECRET and SECRET not in safe_url(url)


def test_server_backend_mysql_connects_through_pymysql_with_affected_rows(
        tmp_path: Path, mysql_url: URL) -> None:
    config = cfg(tmp_path, backend="mysql", dbhost=str(mysql_url.host),
                 dbport=str(mysql_url.port), dbuser=str(mysql_url.username),
                 dbpasswd=str(mysql_url.password), dbname=str(mysql_url.database))
    url = database_url(config)
    assert url.drivername == "mysql+pymysql" and url.database == mysql_url.database
    engine = engine_mod.make_engine(config)
    try:
        with engine.connect() as conn:
            # conditional_upsert needs affected rows; SQLAlchemy would ask for found rows
            assert not conn.connection.dbapi_connection.client_flag & 2  # type: ignore[union-attr]
        assert upgrade(engine) == (None, head_revision())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"backend": "oracle", "dbhost": "h"}, "backend 'oracle' is not supported"),
        ({"dbhost": "h"}, "backend 'oracle' is not supported"),  # PanDA's default backend
        ({"backend": "postgres", "dbpasswd": "$NOT_SET_ANYWHERE"}, "$NOT_SET_ANYWHERE"),
        ({"backend": "postgres", "dbport": "five"}, "'dbport' must be a whole number"),
    ],
)
def test_unusable_server_keys_say_what_to_fix(tmp_path: Path, server: dict[str, str],
                                              message: str) -> None:
    with pytest.raises(DatabaseConfigError, match=message.replace("$", r"\$")):
        database_url(cfg(tmp_path, **server))


def test_a_bad_db_url_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        database_url(cfg(tmp_path, f"postgresql://u:{SECRET}@h:port/db"))
    assert SECRET not in str(caught.value) and "db_url" in str(caught.value)


def test_no_database_configured_means_sqlite_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert database_url(cfg(tmp_path), tmp_path).database == str(tmp_path / "panda_daemon.sqlite")
    monkeypatch.setenv("PANDA_DAEMON_STATE_DIR", str(tmp_path / "state"))
    assert database_url(cfg(tmp_path)).database == str(tmp_path / "state/panda_daemon.sqlite")
    engine = make_engine(cfg(tmp_path))
    try:
        assert ensure_schema(engine) == head_revision()  # SQLite: created on first use
    finally:
        engine.dispose()
    assert (tmp_path / "state" / "panda_daemon.sqlite").is_file()


def test_state_dir_falls_back_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "no-such-parent" / "panda-daemon"
    monkeypatch.setattr(engine_mod, "SYSTEM_STATE_DIR", system)
    assert default_state_dir({"HOME": "/home/u"}) == Path("/home/u/.local/state/panda-daemon")
    (tmp_path / "var-lib").mkdir()
    monkeypatch.setattr(engine_mod, "SYSTEM_STATE_DIR", tmp_path / "var-lib" / "panda-daemon")
    assert default_state_dir({"HOME": "/home/u"}) == tmp_path / "var-lib" / "panda-daemon"
    assert default_state_dir({"PANDA_DAEMON_STATE_DIR": "/x"}) == Path("/x")


# --- CLI ------------------------------------------------------------------------------------

def test_cli_db_upgrade_then_already_at_head(
    empty_engine: Engine, config_for: Callable[..., PandaConfig],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_for(empty_engine.url)
    assert cmd_history(config, argparse.Namespace(name=None, limit=5, json=False)) == RET_SCHEMA
    assert "run `panda-daemon db upgrade`" in capsys.readouterr().err
    assert cmd_db_upgrade(config, argparse.Namespace()) == 0
    assert f"schema upgraded from nothing to {head_revision()}" in capsys.readouterr().out
    assert cmd_db_upgrade(config, argparse.Namespace()) == 0
    assert f"schema already at {head_revision()}" in capsys.readouterr().out
    assert cmd_locks(config, argparse.Namespace(json=False)) == 0
    assert "no leases yet" in capsys.readouterr().out


def test_cli_reports_an_unreachable_database_without_the_password(
    config_for: Callable[..., PandaConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(f"postgresql+psycopg2://panda:{SECRET}@127.0.0.1:1/panda")
    assert cmd_unlock(config, argparse.Namespace(name="x")) == RET_DATABASE
    err = capsys.readouterr().err
    assert "panda:***@127.0.0.1:1" in err and SECRET not in err
    bad = config_for("")
    bad.server.update(backend="oracle", dbhost="h")
    assert cmd_locks(bad, argparse.Namespace(json=False)) == RET_CONFIG


def test_add_db_subcommands_parses_every_command() -> None:
    parser = argparse.ArgumentParser(prog="panda-daemon")
    add_db_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["history", "sweeper", "--limit", "5", "--json"])
    assert (args.func, args.name, args.limit, args.json) == (cmd_history, "sweeper", 5, True)
    args = parser.parse_args(["history"])
    assert (args.name, args.limit, args.json) == (None, 50, False)
    assert parser.parse_args(["locks", "--json"]).func is cmd_locks
    args = parser.parse_args(["unlock", "sweeper"])
    assert (args.func, args.name) == (cmd_unlock, "sweeper")
    assert parser.parse_args(["db", "upgrade"]).func is cmd_db_upgrade
    with pytest.raises(SystemExit):
        parser.parse_args(["history", "--limit", "0"])

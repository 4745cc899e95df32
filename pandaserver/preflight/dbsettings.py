"""The database settings as the master will use them: where, whether SQLAlchemy knows the
URL, whether its driver is installed, whether it is shared; with ``connect``, whether it
answers and has this code's schema. Messages never show a password.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pandaserver import exitcodes
from pandaserver.config import PandaConfig
from pandaserver.config.problems import did_you_mean

ERROR, WARNING = "error", "warning"
SUPPORTED = ("postgresql", "mysql", "sqlite")
# installed driver module -> the URL prefix naming it
DRIVERS = {"postgresql": ("psycopg2", "postgresql+psycopg2://"),
           "mysql": ("pymysql", "mysql+pymysql://")}
SCHEME_HINTS = {"postgres": "postgresql+psycopg2", "pgsql": "postgresql+psycopg2",
                "mariadb": "mysql+pymysql", "sqlite3": "sqlite"}

Finding = tuple[str, str, int]  # level, message, exit status


def _at_in_password(raw: str) -> bool:
    """``scheme://user:pa@ss@host/db``: SQLAlchemy would take ``ss@host`` for the host."""
    _, sep, rest = raw.partition("://")
    if not sep:
        return False
    authority = rest.rsplit("@", 1)[0] if "@" in rest else ""
    return "@" in authority


def _driver_hint(backend: str) -> str:
    module, prefix = DRIVERS.get(backend, ("", ""))
    if module and importlib.util.find_spec(module) is not None:
        return f"; {module} is installed: write the URL as {prefix}..."
    return "; install the driver, or name an installed one in the URL (dialect+driver://)"


def database_findings(cfg: PandaConfig, *, connect: bool = False,
                      sync_scripts: list[str] | None = None) -> tuple[str, list[Finding]]:
    """(where the database is, without a password; what is wrong or worth a warning)."""
    from pandaserver.db.direct.schemacheck import default_sqlite, sqlite_url

    default = default_sqlite(cfg)
    if default is not None and not connect:  # the state directory's file: no SQLAlchemy
        return sqlite_url(default), _sqlite_findings(cfg, str(default), "", sync_scripts or [])
    from sqlalchemy.exc import ArgumentError

    from pandaserver.db.base.engine import DatabaseConfigError, database_url, safe_url

    raw = cfg.daemon.db_url.strip()
    place = cfg.where("daemon", "db_url") if raw else f"{cfg.path} [server]"
    if raw and _at_in_password(raw):
        return "", [(ERROR, f"{place}: the part before the host holds more than one '@':"
                            " write an '@' inside the user name or password as %40 (the value"
                            " is not shown: it holds a password)", exitcodes.RET_CONFIG)]
    if not raw and "backend" not in cfg.server and cfg.server.get("dbhost", "").strip():
        return "", [(ERROR, f"{cfg.where('server', 'dbhost')}: is set and [server] backend is"
                            " not, so the database is PanDA's default, Oracle, which"
                            " panda-daemon's own tables do not support: set [server] backend to"
                            " postgres or mysql, or [daemon] db_url to a supported database",
                     exitcodes.RET_CONFIG)]
    try:
        url = database_url(cfg)
    except DatabaseConfigError as exc:
        return "", [(ERROR, str(exc), exitcodes.RET_CONFIG)]
    except (KeyError, ValueError) as exc:
        return "", [(ERROR, f"{place}: not a usable database URL: {exc}", exitcodes.RET_CONFIG)]
    where = safe_url(url)
    try:
        dialect = url.get_dialect()
    except ArgumentError:  # NoSuchModuleError: an unknown dialect or driver name
        scheme = url.drivername
        hint = SCHEME_HINTS.get(scheme.split("+")[0])
        suggestion = (f' (did you mean "{hint}"?)' if hint
                      else did_you_mean(scheme, ["postgresql+psycopg2", "mysql+pymysql",
                                                 "sqlite"]))
        return where, [(ERROR, f"{place}: database {where}: {scheme!r} is not a database"
                               f" SQLAlchemy knows{suggestion}; panda-daemon's tables live in"
                               " postgresql+psycopg2://, mysql+pymysql:// or sqlite:///",
                        exitcodes.RET_CONFIG)]
    backend = url.get_backend_name()
    if backend not in SUPPORTED:
        return where, [(ERROR, f"{place}: database {where}: backend {backend!r} is not supported"
                               " by panda-daemon's own tables (allowed: postgresql, mysql"
                               " (MySQL/MariaDB), sqlite)", exitcodes.RET_CONFIG)]
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return where, [(ERROR, f"{place}: database {where}: the driver {url.get_driver_name()!r}"
                               f" is not installed ({exc}){_driver_hint(backend)}",
                        exitcodes.RET_CONFIG)]
    findings: list[Finding] = []
    if backend == "sqlite":
        findings += _sqlite_findings(cfg, url.database or "", raw, sync_scripts or [])
        if any(level == ERROR for level, _, _ in findings):
            return where, findings
    if connect:
        findings += _connect(url, place)
    return where, findings


def _sqlite_findings(cfg: PandaConfig, database: str, raw: str, sync: list[str]
                     ) -> list[Finding]:
    """A SQLite file that cannot be created, or the warning of sync scripts on it."""
    from pandaserver.db.direct.statedir import STATE_DIR_ENV, sqlite_unusable

    place = cfg.where("daemon", "db_url") if raw else str(cfg.path)
    note = "" if raw else (
        f" (no database is configured: the default, in {STATE_DIR_ENV})"
        if os.environ.get(STATE_DIR_ENV, "").strip() else
        " (no database is configured: the default, in the state directory under"
        f" HOME={os.environ.get('HOME', '')})")
    unusable = sqlite_unusable(database, note)
    if unusable is not None:
        return [(ERROR, f"{place}: {unusable}", exitcodes.RET_CONFIG)]
    return _local_sqlite(cfg, database, raw, sync)


def _local_sqlite(cfg: PandaConfig, database: str, raw: str, sync: list[str]) -> list[Finding]:
    if not sync:
        return []
    why = ("[daemon] db_url names it" if raw
           else "no [daemon] db_url and no [server] backend or dbhost are set")
    names = ", ".join(sorted(sync))
    return [(WARNING, f"{cfg.path}: sync scripts ({names}) are exclusive on this host only:"
                      f" the database is the local SQLite file {database or ':memory:'} ({why}),"
                      " so every server of a fleet runs every sync script; set [daemon] db_url"
                      " to the database the fleet shares", 0)]


def _connect(url: object, place: str) -> list[Finding]:
    from sqlalchemy import URL
    from sqlalchemy.exc import SQLAlchemyError

    from pandaserver.db.base.engine import describe_db_error, engine_from_url
    from pandaserver.db.base.schema import SchemaError, check_schema
    from pandaserver.db.direct.credentials import credentials_refused

    assert isinstance(url, URL)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and (not url.database or not Path(url.database).expanduser().exists()):
        return []  # the master creates it, with the current schema
    engine = engine_from_url(url, statement_timeout=10.0)
    try:
        check_schema(engine)
    except SchemaError as exc:
        if sqlite and exc.kind != "newer":
            return []  # a private SQLite file is upgraded at start
        return [(ERROR, f"{place}: {exc}", exitcodes.RET_SCHEMA)]
    except SQLAlchemyError as exc:
        if credentials_refused(exc):
            return [(ERROR, f"{place}: the database refused the credentials:"
                            f" {describe_db_error(exc, url)}; this is the configuration, not an"
                            " outage: run and start refuse it too (exit"
                            f" {exitcodes.RET_CONFIG}); fix the user or password (a ${{VAR}} in"
                            " the value: is the variable set, to the right value, where the"
                            " daemon starts?)", exitcodes.RET_CONFIG)]
        return [(ERROR, f"{place}: cannot connect: {describe_db_error(exc, url)}",
                 exitcodes.RET_DATABASE)]
    finally:
        engine.dispose()
    return []


def local_sqlite_note(cfg: PandaConfig) -> str | None:
    """The warning of a configuration whose sync scripts are exclusive on this host only
    (for ``fleet`` and the master's start), or None."""
    sync = [spec.name for spec in cfg.daemon.enabled_scripts if spec.sync]
    if not sync:
        return None
    _, findings = database_findings(cfg, sync_scripts=sync)
    notes = [message for level, message, _ in findings if level == WARNING]
    return notes[0] if notes else None

"""The SQLAlchemy engine, from the configuration; and error messages without passwords.

Where the database is, first match wins:

1. ``[daemon] db_url``: any SQLAlchemy URL (``$VAR`` is expanded by the config loader);
   for PostgreSQL it may list a primary and its standbys (``db/base/multihost.py``).
2. The ``[server]`` keys of the original PanDA configuration: ``backend`` (postgres,
   mysql or sqlite), ``dbhost``, ``dbport``, ``dbuser``, ``dbpasswd``, ``dbname``;
   each may be ``$VAR``. Used as soon as ``backend`` or ``dbhost`` is present, so a
   configuration that points at a shared database never silently falls back to a
   private SQLite file (which would let every server run every sync script).
3. A SQLite file ``panda_daemon.sqlite`` in the state directory (``default_state_dir()``).

Engines have short connect timeouts and ``pool_pre_ping`` so a database outage cannot
stall the master for long; SQLite files run in WAL mode with a busy timeout so several
masters on one host can share one file.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from pandaserver.config import PandaConfig
from pandaserver.db.base import multihost
from pandaserver.db.direct import statedir
from pandaserver.db.direct.sqlitedirect import SQLITE_BUSY_TIMEOUT as SQLITE_BUSY_TIMEOUT
from pandaserver.db.direct.statedir import SQLITE_ELSEWHERE as SQLITE_ELSEWHERE
from pandaserver.db.direct.statedir import SQLITE_FILENAME as SQLITE_FILENAME
from pandaserver.db.direct.statedir import STATE_DIR_ENV as STATE_DIR_ENV
from pandaserver.db.direct.statedir import sqlite_unusable as sqlite_unusable

SYSTEM_STATE_DIR = statedir.SYSTEM_STATE_DIR  # a module attribute: tests move it
# SQLITE_BUSY_TIMEOUT: seconds SQLite waits for another writer (sqlitedirect: the commands
# that reach a SQLite file through sqlite3 wait as long)

CONNECT_TIMEOUT = 5.0  # seconds to establish a connection

_DRIVERS = {"postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2",
            "mysql": "mysql+pymysql", "sqlite": "sqlite"}


class DatabaseConfigError(Exception):
    """The configuration does not say where a usable database is (message says what to fix)."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the default SQLite file lives (``pandaserver.db.direct.statedir``, with this module's
    ``SYSTEM_STATE_DIR``)."""
    return statedir.default_state_dir(environ, SYSTEM_STATE_DIR)


def _server(cfg: PandaConfig, key: str) -> str | None:
    try:
        value = cfg.server_value(key)
    except KeyError as exc:
        raise DatabaseConfigError(
            f"{cfg.path} [server] key {key!r} refers to environment variable"
            f" ${exc.args[0]}, which is not set"
        ) from None
    return value.strip() if value is not None else None


def database_url(cfg: PandaConfig, state_dir: Path | None = None) -> URL:
    """The URL of the database panda-daemon uses (see the module docstring for the order)."""
    raw = cfg.daemon.db_url.strip()
    if raw:
        several = multihost.problem(raw)  # a primary and its standbys: db/base/multihost.py
        if several is not None:
            raise DatabaseConfigError(f"{cfg.path} [daemon] key 'db_url': {several}")
        try:
            return make_url(multihost.normalize(raw))
        except (ArgumentError, ValueError):
            # never echo the value: it may hold a password
            raise DatabaseConfigError(
                f"{cfg.path} [daemon] key 'db_url' is not a valid SQLAlchemy URL; expected"
                " dialect+driver://user:password@host:port/dbname (several hosts:"
                f" {multihost.EXAMPLE}) or sqlite:////path/file"
            ) from None
    backend = (_server(cfg, "backend") or "").lower()
    host = _server(cfg, "dbhost")
    if backend or host:
        return _server_url(cfg, backend or "oracle", host)
    directory = state_dir if state_dir is not None else default_state_dir()
    return URL.create("sqlite", database=str(directory / SQLITE_FILENAME))


def _server_url(cfg: PandaConfig, backend: str, host: str | None) -> URL:
    driver = _DRIVERS.get(backend)
    if driver is None:
        raise DatabaseConfigError(
            f"{cfg.path} [server] backend {backend!r} is not supported by panda-daemon's own"
            f" tables (allowed: postgres, mysql, sqlite); set [daemon] db_url to a supported"
            f" database"
        )
    name = _server(cfg, "dbname")
    if driver == "sqlite":
        if not name:
            raise DatabaseConfigError(f"{cfg.path} [server] backend sqlite needs dbname (the file)")
        return URL.create("sqlite", database=name)
    port_text = _server(cfg, "dbport")
    port: int | None = None
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise DatabaseConfigError(
                f"{cfg.path} [server] key 'dbport' must be a whole number, got: {port_text!r}"
            ) from None
    return URL.create(
        driver,
        username=_server(cfg, "dbuser") or None,
        password=_server(cfg, "dbpasswd") or None,
        host=host or None,
        port=port,
        database=name or None,
    )


def make_engine(
    cfg: PandaConfig,
    state_dir: Path | None = None,
    *,
    pool_size: int | None = None,
    statement_timeout: float | None = None,
    autocommit: bool = False,
    pre_ping: bool = True,
    io_timeout: float | None = None,
) -> Engine:
    """An engine for the configured database (the SQLite directory is created if needed).

    See ``engine_from_url`` for the keyword arguments.
    """
    return engine_from_url(
        database_url(cfg, state_dir), pool_size=pool_size, statement_timeout=statement_timeout,
        autocommit=autocommit, pre_ping=pre_ping, io_timeout=io_timeout,
    )


def engine_from_url(
    url: URL | str,
    *,
    pool_size: int | None = None,
    statement_timeout: float | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    autocommit: bool = False,
    pre_ping: bool = True,
    io_timeout: float | None = None,
) -> Engine:
    """An engine with panda-daemon's connection settings for ``url``.

    ``io_timeout`` (seconds) bounds how long a connection may sit with no answer from the
    server: PostgreSQL ``tcp_user_timeout`` and quick keepalives, PyMySQL read and write
    timeouts. For the master's engine; scripts' engines leave it None. The master also
    bounds every call on its own side (``pandaserver/daemons/fleet/lanes.py``): a server that
    stopped answering while its kernel still acknowledges (SIGSTOP, a hung proxy) is
    noticed by that bound alone.

    ``statement_timeout`` (seconds, PostgreSQL only) bounds every statement; leave it
    None for engines handed to scripts, whose queries may legitimately be long.

    ``autocommit`` makes every connection autocommit from the start: right for the
    master, whose statements (leases, history, heartbeats) are each atomic alone; it
    saves the BEGIN/COMMIT round trips. ``pre_ping`` (a ``SELECT 1`` at each checkout)
    replaces a connection that died with the server; without it ``LeaseStore`` still
    retries a statement once on a fresh connection after a disconnect. With
    ``autocommit=True, pre_ping=False`` a lease grant is one round trip.
    """
    url = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping}
    if autocommit:
        kwargs["isolation_level"] = "AUTOCOMMIT"
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "sqlite":
        _prepare_sqlite_file(url)
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
        kwargs["pool_pre_ping"] = False  # a file cannot go away between checkouts
    else:
        kwargs["pool_recycle"] = 1800
        if pool_size is not None:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
    if backend == "postgresql" and url.get_driver_name() == "psycopg2":
        connect_args.update(
            connect_timeout=max(1, round(connect_timeout)),
            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
            application_name="panda-daemon",
        )
        if statement_timeout is not None:
            connect_args["options"] = f"-c statement_timeout={round(statement_timeout * 1000)}"
        if io_timeout is not None:
            connect_args.update(keepalives_idle=max(1, round(io_timeout / 2)),
                                keepalives_interval=1, keepalives_count=3,
                                tcp_user_timeout=max(1000, round(io_timeout * 1000)))
    elif backend == "mysql":
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
        if io_timeout is not None:
            connect_args["read_timeout"] = connect_args["write_timeout"] = max(1, round(io_timeout))
        # affected rows, not found rows (SQLAlchemy asks PyMySQL/mysqlclient for
        # CLIENT.FOUND_ROWS): conditional_upsert tells an update from a refusal by them
        connect_args["client_flag"] = 0
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def socket_of(dbapi_connection: Any) -> int | None:
    """The file descriptor of a DB-API connection's socket (psycopg2, PyMySQL), if any."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg2
    if callable(fileno):
        try:
            fd = fileno()
        except Exception:
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None
    sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
    if sock is not None:
        try:
            fd = sock.fileno()
        except OSError:
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None
    return None


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    try:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseConfigError(
            f"the SQLite database {database} cannot be created: {exc.strerror} ({exc.filename});"
            f" {SQLITE_ELSEWHERE}") from None


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        _sqlite_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays so). SQLite answers "database is locked" at once,
    without its busy handler, when several connections switch a new file at the same
    moment; so retry until the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode = WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# ---------------------------------------------------------------------------------------
# Messages without passwords

_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@"
)
_PASSWORD_KV = re.compile(
    r"(?i)(?P<key>\bpass(?:word|wd)?\s*[=:]\s*)(?P<quote>['\"]?)[^\s'\"]*(?P=quote)"
)


def safe_url(url: URL | str) -> str:
    """The URL as text with its password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return mask_secrets(url)


def mask_secrets(text: str, password: str | None = None) -> str:
    """Hide ``password`` (raw and URL-quoted) and anything that looks like one in ``text``."""
    if password:
        for form in {password, quote(password, safe=""), quote(password)}:
            text = text.replace(form, "***")
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_KV.sub(lambda m: f"{m['key']}***", text)


def describe_db_error(exc: BaseException, url: URL | str | None = None) -> str:
    """One line (or a few) saying what went wrong, naming the database, never the password.

    The SQL statement and parameters SQLAlchemy appends are left out; the driver's own
    message is kept.
    """
    password: str | None = None
    where = ""
    if url is not None:
        try:
            parsed = make_url(url) if not isinstance(url, URL) else url
            password = parsed.password if isinstance(parsed.password, str) else None
            where = f"database {safe_url(parsed)}: "
        except (ArgumentError, ValueError):
            where = f"database {mask_secrets(str(url))}: "
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        kind = type(exc.orig).__name__
        detail = str(exc.orig)
    else:
        kind = type(exc).__name__
        detail = str(exc).split("\n[SQL:", 1)[0]
    detail = detail.split("\n(Background on this error", 1)[0]
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()]
    message = f"{where}{kind}: {' / '.join(lines) if lines else 'no details'}"
    return mask_secrets(message, password)

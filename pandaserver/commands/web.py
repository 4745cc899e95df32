"""``panda-daemon web``, ``panda-daemon fleet`` and ``panda-daemon logs``.

``fleet --check`` follows the monitoring-plugin convention (Nagios, Icinga, Sensu):
one status line, then details; exit 0 OK, 1 WARNING (late scripts, servers whose
configuration differs), 2 CRITICAL (stale scripts), 3 UNKNOWN (the database or the
configuration cannot be used): the ``CHECK_*`` codes, the one exception to the table of
``pandaserver.exitcodes``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pandaserver.commands.argtypes import option_type, positive_int
from pandaserver.commands.messages import err
from pandaserver.config import PandaConfig
from pandaserver.config.problems import did_you_mean
from pandaserver.exitcodes import (
    CHECK_CRITICAL,
    CHECK_OK,
    CHECK_UNKNOWN,
    CHECK_WARNING,
    RET_CONFIG,
    RET_DATABASE,
    RET_FAILED,
    RET_OK,
    RET_SCHEMA,
    RET_USER,
)
from pandaserver.fmt import offset, relative, span, table, when
from pandaserver.service.pidfile import DEFAULT_PID_DIR, LOCK_DIR_VARIABLE, WEB_PID_FILE_NAME
from pandaserver.web.settings import (
    WebConfigError,
    WebSettings,
    parse_bind,
    parse_factor,
    web_settings,
)

if TYPE_CHECKING:  # imported when a command runs, not for every `panda-daemon` call
    from pandaserver.web.fleetview import Overview

PIDFILE_HELP = (f"${LOCK_DIR_VARIABLE}/{WEB_PID_FILE_NAME}, else"
                f" {DEFAULT_PID_DIR / WEB_PID_FILE_NAME}")


def add_web_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    web = sub.add_parser("web", help="serve the fleet pages, their JSON API and /metrics"
                                     " (gunicorn; read-only; localhost by default)")
    web.add_argument("--bind", type=option_type(parse_bind), default=None, metavar="HOST:PORT",
                     help=f"where to listen (default: [daemon_web] bind, else"
                          f" {WebSettings().bind})")
    web.add_argument("--workers", type=positive_int, default=1,
                     help="gunicorn worker processes (default 1: keeps /metrics counters"
                          " consistent)")
    web.add_argument("--threads", type=positive_int, default=4,
                     help="threads per worker (default 4)")
    web.add_argument("--stale-factor", type=option_type(parse_factor), default=None, metavar="K")
    web.add_argument("--access-log", default=None, metavar="FILE",
                     help="write an access log there ('-': standard output)")
    web.add_argument("--detach", action="store_true",
                     help="run in the background; return once it answers (for rc.d scripts)")
    web.add_argument("--stop", action="store_true", help="stop the server of --pidfile")
    web.add_argument("--pidfile", type=Path, default=None, metavar="FILE",
                     help=f"pid file (with --detach and --stop, default: {PIDFILE_HELP})")
    web.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                     help="with --detach: its output (default <logdir>/panda-daemon-web.log)")
    web.set_defaults(func=cmd_web)

    fleet = sub.add_parser("fleet", help="every server and script of the fleet, from the database")
    fleet.add_argument("--json", action="store_true", help="print JSON")
    fleet.add_argument("--check", action="store_true",
                       help="monitoring check: exit 2 when a script is stale, 1 when one is late"
                            " or a server's configuration differs, 3 when unknown")
    fleet.add_argument("--stale-factor", type=option_type(parse_factor), default=None, metavar="K",
                       help="stale after K x period without a success anywhere (default:"
                            " [daemon_web] stale_factor, else 3)")
    fleet.set_defaults(func=cmd_fleet)

    logs = sub.add_parser("logs", help="the recent log records of one script (worker log)")
    logs.add_argument("name", help="the script's name")
    logs.add_argument("--lines", type=positive_int, default=50, metavar="N",
                      help="how many records (default 50; a record keeps its continuation lines)")
    logs.add_argument("--grep", default=None, metavar="TEXT", help="only records containing TEXT")
    logs.add_argument("--file", type=Path, default=None,
                      help="read this file (default: <logdir>/panda-daemons.log)")
    logs.set_defaults(func=cmd_logs)


def _settings(cfg: PandaConfig, stale_factor: float | None, bind: str | None = None
              ) -> WebSettings:
    return web_settings(cfg).with_overrides(stale_factor=stale_factor, bind=bind)


# --- web --------------------------------------------------------------------------------

def cmd_web(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.db.base.engine import DatabaseConfigError, database_url
    from pandaserver.web import server

    pidfile: Path | None = args.pidfile
    if args.stop or args.detach:
        pidfile = pidfile or server.default_pidfile()
    if args.stop:
        assert pidfile is not None
        return server.stop(pidfile)
    try:
        settings = _settings(cfg, args.stale_factor, args.bind)
        database_url(cfg)  # fail now, not at the first request, when it names none
    except (WebConfigError, DatabaseConfigError) as exc:
        err(str(exc))
        return RET_CONFIG
    if args.detach:
        assert pidfile is not None
        argv = ["-c", cfg.origin, "--log-level", args.log_level, "web",
                "--bind", settings.bind, "--workers", str(args.workers),
                "--threads", str(args.threads), "--pidfile", str(pidfile.absolute()),
                "--stale-factor", str(settings.stale_factor)]
        if args.access_log:
            argv += ["--access-log", args.access_log]
        return server.start_detached(argv, settings.bind, args.log_file or _log_dir(cfg)
                                     / server.LOG_NAME)

    def load() -> object:
        from pandaserver.web.app import FleetApp

        return FleetApp(cfg, settings)

    options = server.gunicorn_options(settings.bind, args.workers, args.threads, args.access_log,
                                      pidfile)
    if cfg.daemon.uname:  # started as root: the workers that read the database do not stay root
        from pandaserver.service.privileges import PrivilegeError, resolve_user

        try:
            user = resolve_user(cfg.daemon.uname, cfg.daemon.gname, str(cfg.path))
        except PrivilegeError as exc:
            err(str(exc))
            return RET_USER
        if user is not None:
            options.update(user=user.uid, group=user.gid)
    return server.serve(load, options)


def _log_dir(cfg: PandaConfig) -> Path:
    from pandaserver.service.logfiles import logdir_of

    return logdir_of(cfg)


# --- fleet ------------------------------------------------------------------------------

def _overview(cfg: PandaConfig, settings: WebSettings) -> Overview:
    from pandaserver.db.base.schema import check_schema
    from pandaserver.web.fleetview import FleetReader

    reader = FleetReader(cfg, settings)
    try:
        check_schema(reader.engine)
        return reader.overview()
    finally:
        reader.dispose()


def _sqlite_overview(cfg: PandaConfig, settings: WebSettings, path: Path) -> Overview:
    """``_overview`` of SQLite file ``path`` through ``sqlite3``, without SQLAlchemy (its
    import would be most of the command's time); the same checks, rows and words."""
    from pandaserver.db.direct.operator_sqlite import SqliteControl
    from pandaserver.db.direct.sqlitedirect import opened
    from pandaserver.web import fleetsqlite
    from pandaserver.web.fleetview import FleetReader

    with opened(path) as conn:
        return FleetReader(cfg, settings).view(fleetsqlite.read_fleet(conn),
                                               SqliteControl(conn).holds())


def _read_fleet(cfg: PandaConfig, args: argparse.Namespace) -> Overview | int:
    """The overview, or the exit status of the failure said (``_fail``)."""
    from pandaserver.db.direct.sqlitedirect import CommandRefused, sqlite_file

    try:
        settings = _settings(cfg, args.stale_factor)
    except WebConfigError as exc:
        return _fail(args, str(exc), RET_CONFIG)
    path = sqlite_file(cfg)
    if path is not None:
        try:
            return _sqlite_overview(cfg, settings, path)
        except CommandRefused as exc:
            return _fail(args, str(exc), exc.code)
    from sqlalchemy.exc import SQLAlchemyError

    from pandaserver.db.base.engine import (
        DatabaseConfigError,
        database_url,
        describe_db_error,
        safe_url,
    )
    from pandaserver.db.base.schema import SchemaError

    try:
        return _overview(cfg, settings)
    except DatabaseConfigError as exc:
        return _fail(args, str(exc), RET_CONFIG)
    except SchemaError as exc:
        return _fail(args, f"database {safe_url(database_url(cfg))}: {exc}", RET_SCHEMA)
    except SQLAlchemyError as exc:
        return _fail(args, describe_db_error(exc, database_url(cfg)), RET_DATABASE)


def cmd_fleet(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.web.fleetview import jsonable

    overview = _read_fleet(cfg, args)
    if isinstance(overview, int):
        return overview
    if args.check:
        code, text = check_text(overview)
        sys.stdout.write(text)
        return code
    if args.json:
        data = {"db_now": overview.db_now, "stale_factor": overview.stale_factor,
                "servers": overview.servers, "scripts": overview.scripts,
                "leases": overview.leases, "local_masters": overview.local,
                "holds": overview.holds,
                "summary": overview.summary()}
        sys.stdout.write(json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")
        return RET_OK
    from pandaserver.preflight.dbsettings import local_sqlite_note

    note = local_sqlite_note(cfg)  # a fleet that cannot share leases says so
    sys.stdout.write(fleet_text(overview) + (f"\nWARNING: {note}\n" if note else ""))
    return RET_OK


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.check:
        sys.stdout.write(f"UNKNOWN: {message}\n")
        return CHECK_UNKNOWN
    err(message)
    return code


def check_text(ov: Overview) -> tuple[int, str]:
    """The monitoring status (code, text) of the fleet."""
    from pandaserver.web.model import schedule_label

    details = []
    for s in ov.stale:
        since = (f"no successful run anywhere for {span(s.since_success)}"
                 if s.since_success is not None else "never a successful run anywhere")
        limit = (f"{ov.stale_factor:g} x {span(s.period)}" if s.cron is None else
                 f"{ov.stale_factor:g} firings of {schedule_label(s)}")
        details.append(f"stale: {s.name} ({since}, limit {limit})")
    for s in ov.late:
        details.append(f"late: {s.name} (due {relative(-(s.overdue or 0.0))})")
    for v in ov.mismatched:
        details.append(f"config differs: {v.server} (hash {v.config_hash[:12]})")
    for name, where in sorted(ov.crash_looping.items()):
        details.append(f"crash-looping: {name} on {', '.join(where)}")
    for s in ov.scripts:
        if s.paused:  # expected not to run: never stale or late, said so (not a problem)
            scope = "fleet-wide" if "*" in s.paused_on else "on every live server"
            details.append(f"paused: {s.name} ({scope}; not judged stale or late)")
    for m in ov.log_failing:
        details.append(f"log lines dropped: {m.server} on this host ({m.log_failing};"
                       f" {m.log_dropped} so far)")
    if ov.stale:
        code, word = CHECK_CRITICAL, "CRITICAL"
    elif ov.late or ov.mismatched or ov.crash_looping or ov.log_failing:
        code, word = CHECK_WARNING, "WARNING"
    else:
        code, word = CHECK_OK, "OK"
    alive = sum(1 for v in ov.servers if v.alive)
    looping = f", {len(ov.crash_looping)} crash-looping" if ov.crash_looping else ""
    paused = sum(1 for s in ov.scripts if s.paused)
    looping += f", {paused} paused" if paused else ""
    head = (f"{word}: {len(ov.stale)} stale, {len(ov.late)} late{looping} of"
            f" {len(ov.scripts)} scripts;"
            f" {alive} of {len(ov.servers)} servers alive")
    return code, "\n".join([head, *details]) + "\n"


def _columns(rows: list[list[str]]) -> str:
    return "".join(line + "\n" for line in table(rows))


def fleet_text(ov: Overview) -> str:
    from pandaserver.web.model import schedule_label

    local = {m.server: m for m in ov.local if m.alive}
    servers = [["SERVER", "STATE", "HEARTBEAT", "VERSION", "PID", "CONFIG", "CLOCK OFFSET",
                "WORKERS"]]
    for v in ov.servers:
        m = local.get(v.server)
        state = ("alive, draining" if v.draining else "alive") if v.alive else "SILENT"
        servers.append([v.server, state, relative(-v.heartbeat_age),
                        v.version, str(v.pid),
                        v.config_hash[:12] + (" DIFFERS" if v.config_mismatch else ""),
                        offset(v.clock_offset),
                        f"{m.workers_alive}/{m.n_proc}" if m is not None else "-"])
    scripts = [["SCRIPT", "PERIOD/CRON", "SYNC", "LAST RUN", "NEXT DUE", "LAST SUCCESS", "STATE"]]
    for s in ov.scripts:
        newest = max(s.runs, key=lambda r: r.started_at, default=None)
        last = "-"
        if newest is not None:
            ago = (ov.db_now - newest.started_at).total_seconds()
            last = f"{newest.server} {newest.outcome} {relative(-ago)}"
        flags = [w for w, on in (("STALE", s.stale), ("LATE", s.late),
                                 ("disabled", s.configured and not s.enabled),
                                 ("not configured here", not s.configured)) if on]
        if s.lease_holder:
            flags.append(f"running on {s.lease_holder}")
        flags += [f"PAUSED{'' if h.server == '*' else ' on ' + h.server} by {h.requested_by}"
                  f"{': ' + h.reason if h.reason else ''}" for h in ov.paused if h.name == s.name]
        if s.name in ov.crash_looping:
            flags.append(f"CRASH-LOOPING on {', '.join(ov.crash_looping[s.name])}")
        scripts.append([s.name, schedule_label(s), "?" if s.sync is None else "yes" if s.sync
                        else "no", last, relative(-s.overdue if s.overdue is not None else None),
                        relative(-s.since_success) if s.since_success is not None else "never",
                        " ".join(flags) or "ok"])
    notes = "".join(
        f"logs of {m.server} on this host: "
        + (f"FAILING ({m.log_failing}), " if m.log_failing else "writing again, ")
        + f"{m.log_dropped} line(s) dropped since its start\n"
        for m in local.values() if m.log_failing or m.log_dropped)
    return (f"fleet at {when(ov.db_now)} UTC (database clock); stale after"
            f" {ov.stale_factor:g} x period (a cron script: {ov.stale_factor:g} firings)\n\n"
            + _columns(servers) + notes + "\n"
            + _columns(scripts))


# --- logs -------------------------------------------------------------------------------

def cmd_logs(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.service.logfiles import WORKER_LOG
    from pandaserver.web.logs import script_records

    if args.file is not None:
        path = args.file
    else:
        try:
            path = _log_dir(cfg) / WORKER_LOG
        except ValueError as exc:
            err(str(exc))
            return RET_CONFIG
    if args.name not in cfg.daemon.scripts:
        err(f"note: no script {args.name!r} in {cfg.path}"
            f"{did_you_mean(args.name, cfg.daemon.scripts)}; searching the log anyway")
    try:
        records = script_records(path, args.name, args.lines, args.grep)
    except OSError as exc:
        err(f"cannot read the worker log {path}: {exc.strerror or exc} (workers write it when"
            " the master runs as a service, `panda-daemon start`; --file names another)")
        return RET_FAILED
    if not records:
        what = f" containing {args.grep!r}" if args.grep else ""
        err(f"no log records of {args.name}{what} in {path}")
        return RET_FAILED
    sys.stdout.write("\n".join(records) + "\n")
    return RET_OK

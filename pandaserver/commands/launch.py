"""Building the long-running master from a configuration: what ``run`` and ``start`` share.

Used by ``run`` (``pandaserver.commands.main``) and by ``start``/``restart``
(``pandaserver.commands.service``, which hands ``build_master`` down to the service layer's
detach), so neither command module imports the other.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pandaserver import exitcodes
from pandaserver.config import DaemonSettings, PandaConfig, load_config
from pandaserver.service.hoststatus import short_hostname

if TYPE_CHECKING:
    from pandaserver.daemons.base.clock import Clock
    from pandaserver.daemons.fleet.fleetdb import FleetDb
    from pandaserver.daemons.fleet.late import LateFleet
    from pandaserver.daemons.master.loop import Master

log = logging.getLogger("panda.cli")


def server_name(args: argparse.Namespace) -> str:
    return str(args.server_name or short_hostname())


def disabled(settings: DaemonSettings) -> bool:
    """Validly disabled (``enable = False``); an invalid ``enable`` is an error instead."""
    return not settings.enable and not any(p.key == "enable" for p in settings.fatal)


RELOAD_IMPORT_WAIT = 15.0  # seconds the master's reload waits for the import check


class ReloadRefused(Exception):
    """The re-read configuration cannot run; the master keeps its own."""


def reloader(cfg: PandaConfig) -> Callable[[], DaemonSettings]:
    """What the master calls on SIGHUP: re-read the files ``cfg`` was read from and validate
    them as ``reload`` does (ReloadRefused when they cannot run). Settings the master cannot
    change live are listed in ``restart_needed``, against what it started with."""
    from pandaserver.preflight.validate import RELOAD, drop_scripts, validate

    def reload_settings() -> DaemonSettings:
        new_cfg = load_config(cfg.origin)
        # in the master's loop: a module that hangs at import must not hold it for long
        verdict = validate(new_cfg, RELOAD, cwd=os.getcwd(), import_timeout=RELOAD_IMPORT_WAIT)
        errors = verdict.errors(RELOAD)
        if errors:
            raise ReloadRefused("; ".join(finding.message for finding in errors))
        known = {str(problem) for problem in new_cfg.daemon.problems}
        for finding in verdict.problems():
            if finding.message not in known:  # apply_settings logs the config's own
                log.error("%s", finding.message)
        for finding in verdict.warnings(RELOAD):
            log.warning("%s", finding.message)
        drop_scripts(new_cfg, verdict)
        new_cfg.daemon.restart_needed = restart_only_changes(cfg, new_cfg)
        return new_cfg.daemon

    return reload_settings


def restart_only_changes(running: PandaConfig, new: PandaConfig) -> list[str]:
    """What differs between the two that a running master cannot change (its database,
    the user it runs as), as lines without passwords."""
    from sqlalchemy import make_url

    from pandaserver.db.base.engine import DatabaseConfigError, database_url, safe_url

    changes = []
    try:
        old_url, new_url = database_url(running), database_url(new)
    except (DatabaseConfigError, KeyError, ValueError):
        old_url = new_url = make_url("sqlite://")
    if old_url.render_as_string(hide_password=False) != \
            new_url.render_as_string(hide_password=False):
        changes.append(f"the database (the master keeps {safe_url(old_url)}; configured:"
                       f" {safe_url(new_url)})")
    old_user = (running.daemon.uname, running.daemon.gname)
    if (new.daemon.uname, new.daemon.gname) != old_user:
        changes.append(f"uname/gname (the master keeps {':'.join(old_user) or 'its user'};"
                       f" configured: {new.daemon.uname}:{new.daemon.gname})")
    return changes


# what build_master imports: most of a master's start-up, done by ``run`` while the
# preflight's import check runs; with the database side opened first (not ``may_open_late``)
# SQLAlchemy and the database layer too
MASTER_MODULES = ("pandaserver.daemons.base.clock", "pandaserver.daemons.master.loop",
                  "pandaserver.daemons.master.schedule", "pandaserver.daemons.master.statusfile")
DATABASE_MODULES = ("pandaserver.daemons.fleet.fleetdb", "pandaserver.daemons.fleet.opening",
                    "pandaserver.db.base.engine")


def import_master_modules(late: bool = False) -> None:
    """Import what ``build_master`` needs, ahead of it (no side effect but the imports);
    ``late``: not the database layer, which the master imports after its first run."""
    for name in MASTER_MODULES if late else MASTER_MODULES + DATABASE_MODULES:
        importlib.import_module(name)


def may_open_late(cfg: PandaConfig) -> bool:
    """Whether the master may open its database side after its first run (daemons/fleet/late.py):
    a script that needs no lease is due at start, and the database is the state directory's
    SQLite file, which exists (a new one is made and migrated first). Reads no database."""
    from pandaserver.db.direct.schemacheck import default_sqlite

    if not any(not spec.sync and spec.cron is None for spec in cfg.daemon.enabled_scripts):
        return False
    path = default_sqlite(cfg)
    return path is not None and path.is_file()


def late_fleet(cfg: PandaConfig, server: str, clock: Clock) -> LateFleet | None:
    """The master's database side to open after its first run, when it may be (None: open it
    first). Its schema is checked here, before any run, without SQLAlchemy: a schema this
    code refuses (newer, not recorded as working with it) raises ``StartupError`` (exit
    ``RET_SCHEMA``); an older one (upgraded at the opening), a pause or drain in force
    (read before any run) or a file that cannot be read: opened first, as without this."""
    import sqlite3

    from pandaserver.daemons.fleet.history.journal import Journal, journal_path
    from pandaserver.daemons.fleet.late import LateFleet, StartupError
    from pandaserver.db.direct import revisions
    from pandaserver.db.direct.schemacheck import default_sqlite, read_sqlite, sqlite_url, verdict
    from pandaserver.db.direct.statedir import default_state_dir

    path = default_sqlite(cfg)
    if not may_open_late(cfg) or path is None:
        return None
    try:
        found = read_sqlite(path)
    except sqlite3.Error as exc:
        log.debug("schema of %s not read without the database layer (%s)", path, exc)
        return None
    problem = verdict(found.current, found.oldest_code)
    if problem is not None and problem.kind == "newer":
        raise StartupError(exitcodes.RET_SCHEMA, str(problem))
    if problem is not None or found.holds or found.current != revisions.head():
        return None  # upgraded, holds read, or the rolling upgrade logged: by the opening

    def opener(master_id: str, journal: Journal) -> FleetDb:
        from pandaserver.daemons.fleet.opening import open_fleet

        return open_fleet(cfg, server, clock, master_id=master_id, journal=journal)

    journal = Journal(journal_path(default_state_dir(), server), clock.monotonic)
    return LateFleet.make(opener, sqlite_url(path), server, journal)



def build_master(cfg: PandaConfig, args: argparse.Namespace, **options: Any) -> Master:
    """The long-running master of ``cfg`` (SIGHUP re-reads ``cfg.origin``), as ``run`` and the
    service commands (``start``) build it; ``options`` go to ``Master`` as they are.

    Raises ``StartupError`` (with the exit status) when the database refuses the start.
    The database side is opened after the first run when it may be (``late_fleet``).
    """
    from pandaserver.daemons.base.clock import SystemClock, wall_offset_from_env
    from pandaserver.daemons.fleet.late import StartupError
    from pandaserver.daemons.master.loop import Master
    from pandaserver.daemons.master.schedule import late_floor_from_env

    try:
        clock = SystemClock(wall_offset_from_env())
        options.setdefault("late_floor", late_floor_from_env(os.environ))
    except ValueError as exc:
        raise StartupError(exitcodes.RET_CONFIG, str(exc)) from None
    from pandaserver.daemons.master.statusfile import status_path
    from pandaserver.db.direct.statedir import default_state_dir

    server = server_name(args)
    options.setdefault("status_file", status_path(default_state_dir(), server))
    late = late_fleet(cfg, server, clock)
    if late is None:
        from pandaserver.daemons.fleet.opening import open_fleet

        options["fleet"] = open_fleet(cfg, server, clock)
    return Master(cfg.daemon, server=server, log_level=args.log_level, clock=clock,
                  reload_settings=reloader(cfg), late=late, config_path=cfg.origin, **options)

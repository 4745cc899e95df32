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


# what build_master imports (SQLAlchemy and the database layer with them): most of a
# master's start-up, done by ``run`` while the preflight's import check runs
MASTER_MODULES = ("pandaserver.daemons.base.clock", "pandaserver.daemons.fleet.fleetdb",
                  "pandaserver.daemons.master.loop", "pandaserver.daemons.master.schedule",
                  "pandaserver.daemons.master.statusfile", "pandaserver.db.base.engine")


def import_master_modules() -> None:
    """Import what ``build_master`` needs, ahead of it (no side effect but the imports)."""
    for name in MASTER_MODULES:
        importlib.import_module(name)


def build_master(cfg: PandaConfig, args: argparse.Namespace, **options: Any) -> Master:
    """The long-running master of ``cfg`` (SIGHUP re-reads ``cfg.origin``), as ``run`` and the
    service commands (``start``) build it; ``options`` go to ``Master`` as they are.

    Raises ``StartupError`` (with the exit status) when the database refuses the start.
    """
    from pandaserver.daemons.base.clock import SystemClock, wall_offset_from_env
    from pandaserver.daemons.fleet.opening import StartupError, open_fleet
    from pandaserver.daemons.master.loop import Master
    from pandaserver.daemons.master.schedule import late_floor_from_env

    try:
        clock = SystemClock(wall_offset_from_env())
        options.setdefault("late_floor", late_floor_from_env(os.environ))
    except ValueError as exc:
        raise StartupError(exitcodes.RET_CONFIG, str(exc)) from None
    from pandaserver.daemons.master.statusfile import status_path
    from pandaserver.db.base.engine import default_state_dir

    server = server_name(args)
    options.setdefault("status_file", status_path(default_state_dir(), server))
    return Master(cfg.daemon, server=server, log_level=args.log_level, clock=clock,
                  reload_settings=reloader(cfg), fleet=open_fleet(cfg, server, clock),
                  config_path=cfg.origin, **options)

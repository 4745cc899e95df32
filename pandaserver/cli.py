"""The ``panda-daemon`` command."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pandaserver import __version__
from pandaserver.config import ConfigError, DaemonSettings, PandaConfig, load_config
from pandaserver.daemons import exitcodes

if TYPE_CHECKING:
    from pandaserver.daemons.master import Master

log = logging.getLogger("panda.cli")

MASTER_LOG_FORMAT = "%(asctime)s %(levelname)s master pid %(process)d %(name)s: %(message)s"

Command = Callable[[PandaConfig, argparse.Namespace], int]


def short_hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panda-daemon",
        description="Run PanDA server housekeeping scripts on a schedule, one server or a fleet.",
    )
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="panda_server.cfg to read (default: $PANDA_HOME/etc/panda/"
                             "panda_server.cfg, then /etc/panda/panda_server.cfg)")
    parser.add_argument("--server-name", default=None, metavar="NAME",
                        help="name of this master in the fleet (default: the short host name)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"panda-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the master in the foreground, logging to stderr")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config",
                           help="show the scripts as they will run and every problem")
    check.add_argument("--no-import", action="store_true",
                       help="do not try to import the script modules")
    check.set_defaults(func=cmd_check_config)
    once = sub.add_parser("run-once", help="run one script once in the foreground")
    once.add_argument("name", help="the script's name in the config")
    once.add_argument("--ignore-lease", action="store_true",
                      help="run a sync script without taking its fleet-wide lease")
    once.set_defaults(func=cmd_run_once)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands of the cron converter and the database and service layers."""
    try:
        from pandaserver.cron import cli as cron_cli
    except ImportError:
        pass
    else:
        cron = sub.add_parser("cron2json", help="convert crontab lines into daemon config JSON")
        cron_cli.add_arguments(cron)
        cron.set_defaults(func=None, plain=cron_cli.run)
    try:
        from pandaserver.service.commands import add_service_subcommands
    except ImportError:
        pass
    else:
        add_service_subcommands(sub)
    try:
        from pandaserver.web.cli import add_web_subcommands
    except ImportError:
        pass
    else:
        add_web_subcommands(sub)
    try:
        from pandaserver.db.commands import add_db_subcommands
    except ImportError:
        return
    add_db_subcommands(sub)


def server_name(args: argparse.Namespace) -> str:
    return str(args.server_name or short_hostname())


def setup_logging(level: str) -> None:
    """Records go to stderr, each line one write; a line that cannot be written is dropped
    and counted (``logsink.MASTER``, shown by ``status``), never raised."""
    from pandaserver.daemons.logsink import MASTER, SafeHandler

    handler = SafeHandler(fd=2, counter=MASTER)
    handler.setFormatter(logging.Formatter(MASTER_LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def cmd_run(cfg: PandaConfig, args: argparse.Namespace) -> int:
    settings = cfg.daemon
    if not settings.enable:
        log.warning("the daemon is disabled (enable = False in [daemon] of %s); nothing to run",
                    cfg.path)
        return exitcodes.RET_OK
    for problem in settings.problems:
        log.error("%s", problem)
    if settings.unusable():  # fatal problems, or a config value that runs no script at all
        log.error("cannot start: fix the problems above (panda-daemon check-config lists them)")
        return exitcodes.RET_CONFIG

    from pandaserver.daemons.fleet import StartupError

    if os.geteuid() == 0 and not os.environ.get("PANDA_NO_ROOT"):
        log.warning("running scripts as root: 'run' keeps the user it is started as; 'start'"
                    " switches to uname/gname (set PANDA_NO_ROOT=1 to silence this)")
    try:
        master = build_master(cfg, args)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.code
    return master.run()


def build_master(cfg: PandaConfig, args: argparse.Namespace, **options: Any) -> Master:
    """The long-running master of ``cfg`` (SIGHUP re-reads ``cfg.path``), as ``run`` and the
    service commands (``start``) build it; ``options`` go to ``Master`` as they are.

    Raises ``StartupError`` (with the exit status) when the database refuses the start.
    """
    from pandaserver.daemons.clock import SystemClock, wall_offset_from_env
    from pandaserver.daemons.fleet import StartupError, open_fleet
    from pandaserver.daemons.master import Master

    def reload_settings() -> DaemonSettings:
        return load_config(str(cfg.path)).daemon

    try:
        clock = SystemClock(wall_offset_from_env())
    except ValueError as exc:
        raise StartupError(exitcodes.RET_CONFIG, str(exc)) from None
    from pandaserver.daemons.status import status_path
    from pandaserver.db.engine import default_state_dir

    server = server_name(args)
    options.setdefault("status_file", status_path(default_state_dir(), server))
    return Master(cfg.daemon, server=server, log_level=args.log_level, clock=clock,
                  reload_settings=reload_settings, fleet=open_fleet(cfg, server, clock),
                  config_path=str(cfg.path), **options)


def cmd_run_once(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.config.problems import did_you_mean
    from pandaserver.daemons.master import Master

    settings = cfg.daemon
    if settings.fatal:
        for problem in settings.fatal:
            log.error("%s", problem)
        return exitcodes.RET_CONFIG
    if args.name not in settings.scripts:
        bad = [p for p in settings.problems if p.script == args.name]
        for problem in bad:
            log.error("%s", problem)
        if not bad:
            log.error("no script %r in the config of %s%s", args.name, cfg.path,
                      did_you_mean(args.name, settings.scripts))
        return exitcodes.RET_CONFIG
    if not settings.scripts[args.name].enable:
        log.info("script %s is disabled in the config; running it anyway, as asked", args.name)
    from pandaserver.daemons.clock import SystemClock
    from pandaserver.daemons.fleet import StartupError, open_fleet
    from pandaserver.daemons.leases import LocalLeases

    clock = SystemClock()
    try:
        fleet = open_fleet(cfg, server_name(args), clock, member=False)
    except StartupError as exc:
        log.error("cannot run: %s", exc)
        return exc.code
    master = Master(settings, server=server_name(args), log_level=args.log_level, clock=clock,
                    only=args.name, fleet=fleet, config_path=str(cfg.path),
                    leases=LocalLeases() if args.ignore_lease else None)
    return master.run()


def cmd_check_config(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.daemons.checks import render_check

    text, ok = render_check(cfg, try_import=not args.no_import)
    sys.stdout.write(text)
    return exitcodes.RET_OK if ok else exitcodes.RET_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = args.server_name
    if name is not None and not (0 < len(name.strip()) == len(name) <= 255):
        parser.error(f"--server-name must be 1 to 255 characters without surrounding spaces,"
                     f" got: {name!r}")
    setup_logging(args.log_level)
    plain = getattr(args, "plain", None)
    if plain is not None:
        return int(plain(args))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return exitcodes.RET_CONFIG
    func: Command = args.func
    return func(cfg, args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``panda-daemon`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pandaserver import __version__, exitcodes
from pandaserver.commands.registry import BY_NAME, add_commands, parse
from pandaserver.config import ConfigError, PandaConfig, load_config
from pandaserver.service.logfiles import MASTER_LOG_FORMAT

if TYPE_CHECKING:
    from pandaserver.commands.prespawn import Prespawned
    from pandaserver.daemons.master.loop import Master
    from pandaserver.preflight.validate import Verdict

log = logging.getLogger("panda.cli")

Command = Callable[[PandaConfig, argparse.Namespace], int]
# commands that open the database straight away (run, start and the others validate first)
DATABASE_COMMANDS = {"history", "locks", "unlock", "db", "web", "pause", "resume", "run-now",
                     "kill", "drain", "undrain", "restart-workers", "commands", "fleet"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``panda-daemon`` parser: every command listed, ``command``'s own arguments added
    (its module imported: ``pandaserver.commands.registry``); None: none added."""
    parser = argparse.ArgumentParser(
        prog="panda-daemon",
        description="Run PanDA server housekeeping scripts on a schedule, one server or a fleet.",
    )
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="panda_server.cfg to read, or FILE:FILE... read in that order"
                             " (default: as the PanDA server, every one of /etc/panda,"
                             " /usr/etc/panda, ~/etc/panda, $PANDA_HOME/etc/panda,"
                             " $PANDA_HOME/usr/etc/panda that exists, later wins, then"
                             " $PANDA_HOME/etc/config_json/panda_server_config.json)")
    parser.add_argument("--server-name", default=None, metavar="NAME",
                        help="name of this master in the fleet (default: the short host name)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"panda-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub, command, _add_own_command)
    return parser


def _add_own_command(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     name: str) -> None:
    """The commands this module defines: ``run``, ``check-config``, ``run-once``."""
    helptext = BY_NAME[name].help
    if name == "run":
        run = sub.add_parser("run", help=helptext)
        run.set_defaults(func=cmd_run)
    elif name == "check-config":
        check = sub.add_parser("check-config", help=helptext)
        check.add_argument("--no-import", action="store_true",
                           help="do not try to import the script modules")
        check.add_argument("--connect", action="store_true",
                           help="also connect to the database and check its schema")
        check.set_defaults(func=cmd_check_config)
    else:
        once = sub.add_parser("run-once", help=helptext)
        once.add_argument("name", help="the script's name in the config")
        once.add_argument("--ignore-lease", action="store_true",
                          help="run a sync script without taking its fleet-wide lease")
        once.set_defaults(func=cmd_run_once)


# the commands whose process is (or becomes) a master; any other command's records name it
MASTER_COMMANDS = frozenset({"run", "start", "restart", "run-once"})


def log_format(command: str | None) -> str:
    """The master's record format for a master; for another command (``check-config``,
    ``fleet`` ...), the same with the command's name where the master's says ``master``."""
    if command is None or command in MASTER_COMMANDS:
        return MASTER_LOG_FORMAT
    return MASTER_LOG_FORMAT.replace("master pid", f"{command} pid", 1)


def setup_logging(level: str, command: str | None = None) -> None:
    """Records go to stderr, each line one write; a line that cannot be written is dropped
    and counted (``logsink.MASTER``, shown by ``status``), never raised."""
    from pandaserver.config.secrets import redact_handler
    from pandaserver.daemons.base.logsink import MASTER, SafeHandler

    handler = redact_handler(SafeHandler(stream="stderr", counter=MASTER))
    handler.setFormatter(logging.Formatter(log_format(command)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def report(verdict: Verdict, command: str, logger: logging.Logger = log) -> None:
    """Log what ``command`` meets: errors and problems at ERROR, warnings at WARNING."""
    for finding in verdict.errors(command):
        logger.error("%s", finding.message)
    for finding in verdict.problems():
        logger.error("%s", finding.message)
    for finding in verdict.warnings(command):
        logger.warning("%s", finding.message)


def cmd_run(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.commands.launch import disabled

    if disabled(cfg.daemon):
        log.warning("the daemon is disabled (enable = False in [daemon] of %s); nothing to run",
                    cfg.path)
        return exitcodes.RET_OK
    # worker 1 boots on the other core beside the preflight; none for a config already
    # known to be refused (its own problems, found as it was read)
    early = start_early_worker(cfg, args) if not cfg.daemon.unusable() else None
    try:
        return _run(cfg, args, early)
    finally:
        if early is not None:  # not taken by the master: refused, or stopped before it spawned
            early.discard()


def start_early_worker(cfg: PandaConfig, args: argparse.Namespace) -> Prespawned:
    """Worker 1 of ``run``, started before the preflight: its interpreter boots beside the
    checks and the master's imports. It runs nothing and imports no script before the
    master sends it its ``init``, once the preflight and the schema check have passed
    (``pandaserver.commands.prespawn``); a refused start ends it unused."""
    from pandaserver.commands import launch
    from pandaserver.commands.prespawn import Prespawned, worker_argv

    early = Prespawned()
    early.start(worker_argv(launch.server_name(args), args.log_level, cfg.origin, 1))
    return early


def _run(cfg: PandaConfig, args: argparse.Namespace, early: Prespawned | None) -> int:
    from pandaserver.commands.launch import import_master_modules, may_open_late
    from pandaserver.config.users import NO_ROOT_VARIABLE
    from pandaserver.preflight.validate import RUN, drop_scripts, validate

    # the master's modules are imported while the import check's interpreter works (not
    # the database layer when the master opens it after its first run)
    late = may_open_late(cfg)
    verdict = validate(cfg, RUN, cwd=os.getcwd(),
                       meanwhile=lambda: import_master_modules(late))
    report(verdict, RUN)
    code = verdict.exit_code(RUN)
    if code != exitcodes.RET_OK:
        log.error("cannot start: fix the problems above (panda-daemon check-config lists them)")
        return code
    drop_scripts(cfg, verdict)
    if os.geteuid() == 0 and not os.environ.get(NO_ROOT_VARIABLE):
        log.warning("running scripts as root: 'run' keeps the user it is started as; 'start'"
                    " switches to uname/gname (set PANDA_NO_ROOT=1 to silence this)")
    try:
        master = build_master(cfg, args, processes=early)
    except Exception as exc:
        from pandaserver.daemons.fleet.late import StartupError

        if not isinstance(exc, StartupError):
            raise
        log.error("cannot start: %s", exc)
        return exc.code
    return master.run()


def build_master(cfg: PandaConfig, args: argparse.Namespace, **options: Any) -> Master:
    """``run``'s master (``launch.build_master``); ``options`` go to ``Master``, the early
    worker 1 among them (``processes``)."""
    from pandaserver.commands import launch

    return launch.build_master(cfg, args, **options)


def cmd_run_once(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.commands.launch import server_name
    from pandaserver.config.problems import did_you_mean
    from pandaserver.daemons.master.loop import Master
    from pandaserver.preflight.validate import RUN_ONCE, validate

    settings = cfg.daemon
    verdict = validate(cfg, RUN_ONCE)
    errors = verdict.errors(RUN_ONCE)
    if errors:
        for finding in errors:
            log.error("%s", finding.message)
        return errors[0].code
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
    from pandaserver.daemons.base.clock import SystemClock
    from pandaserver.daemons.fleet.leasemanager import LocalLeases
    from pandaserver.daemons.fleet.opening import StartupError, open_fleet

    clock = SystemClock()
    try:
        fleet = open_fleet(cfg, server_name(args), clock, member=False)
    except StartupError as exc:
        log.error("cannot run: %s", exc)
        return exc.code
    master = Master(settings, server=server_name(args), log_level=args.log_level, clock=clock,
                    only=args.name, fleet=fleet, config_path=cfg.origin,
                    leases=LocalLeases() if args.ignore_lease else None)
    return master.run()


def cmd_check_config(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.preflight.report import render_check

    text, code = render_check(cfg, try_import=not args.no_import, connect=args.connect)
    sys.stdout.write(text)
    return code


def _unusable_config(args: argparse.Namespace, problems: list[str]) -> int:
    """Log why the configuration cannot be used; RET_CONFIG, or for ``fleet --check`` (a
    monitoring check, where 2 reads CRITICAL) an UNKNOWN line and CHECK_UNKNOWN."""
    for problem in problems:
        log.error("%s", problem)
    if args.command == "fleet" and args.check:
        sys.stdout.write(f"UNKNOWN: {'; '.join(problems)}\n")
        return exitcodes.CHECK_UNKNOWN
    return exitcodes.RET_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse(build_parser, argv)
    name = args.server_name
    if name is not None and not (0 < len(name.strip()) == len(name) <= 255):
        parser.error(f"--server-name must be 1 to 255 characters without surrounding spaces,"
                     f" got: {name!r}")
    from pandaserver.config.secrets import redact_std_streams

    redact_std_streams()  # no secret leaves through print() either
    setup_logging(args.log_level, getattr(args, "command", None))
    plain = getattr(args, "plain", None)
    if plain is not None:
        return int(plain(args))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _unusable_config(args, [str(problem) for problem in exc.problems])
    if args.command in DATABASE_COMMANDS:  # a message, not a traceback, for a bad URL
        from pandaserver.preflight.dbsettings import ERROR, database_findings

        errors = [message for level, message, _ in database_findings(cfg)[1] if level == ERROR]
        if errors:
            return _unusable_config(args, errors)
    func: Command = args.func
    return func(cfg, args)


if __name__ == "__main__":
    sys.exit(main())

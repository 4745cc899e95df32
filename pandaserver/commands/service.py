"""The service commands of ``panda-daemon``: start, stop, status, restart, reload, reopen-logs.

``stop``, ``status`` and ``reopen-logs`` work even when the configuration file is broken
(a master must stay stoppable); ``start``, ``restart`` and ``reload`` need a usable one.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pandaserver import exitcodes
from pandaserver.commands.launch import build_master
from pandaserver.commands.messages import err
from pandaserver.config import ConfigError, DaemonSettings, PandaConfig, load_config
from pandaserver.service import lifecycle as control
from pandaserver.service.detach import (
    StartError,
    plan_start,
    start_detached,
    start_foreground,
)
from pandaserver.service.logfiles import STDOUT_LOG
from pandaserver.service.pidfile import (
    DEFAULT_PID_DIR,
    LOCK_DIR_VARIABLE,
    PID_FILE_NAME,
    default_pidfile,
)

if TYPE_CHECKING:
    from pandaserver.daemons.master.loop import Master

log = logging.getLogger("panda.service")

STOP_MARGIN = 15.0  # seconds added to stop_grace before stop escalates to SIGKILL
START_WAIT = 60.0


def add_service_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pidfile", type=Path, default=None, metavar="FILE",
                        help=f"the master's pid file (default: ${LOCK_DIR_VARIABLE}/{PID_FILE_NAME},"
                             f" else {DEFAULT_PID_DIR / PID_FILE_NAME})")
    starting = argparse.ArgumentParser(add_help=False)
    starting.add_argument("--wait", type=float, default=START_WAIT, metavar="SECONDS",
                          help="how long start waits for the master to come up (default 60)")
    stopping = argparse.ArgumentParser(add_help=False)
    stopping.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                          help="how long stop waits for the graceful stop before SIGKILL"
                               f" (default: stop_grace + {STOP_MARGIN:g})")

    start = sub.add_parser("start", parents=[common, starting],
                           help="start the master as a service; returns once it is up")
    start.add_argument("--no-detach", action="store_true",
                       help="stay in the foreground as the master (systemd Type=notify)")
    start.set_defaults(func=cmd_start)
    stop = sub.add_parser("stop", parents=[common, stopping],
                          help="stop the master and everything it started")
    stop.set_defaults(func=cmd_stop, plain=_without_config(cmd_stop))
    stat = sub.add_parser("status", parents=[common],
                          help="say whether the master runs (exit 0) or not (exit 3)")
    stat.set_defaults(func=cmd_status, plain=_without_config(cmd_status))
    restart = sub.add_parser("restart", parents=[common, starting, stopping],
                             help="stop, then start (refused while the config cannot start)")
    restart.set_defaults(func=cmd_restart)
    reload = sub.add_parser("reload", parents=[common],
                            help="make the master re-read the config (SIGHUP)")
    reload.set_defaults(func=cmd_reload)
    reopen = sub.add_parser("reopen-logs", parents=[common],
                            help="make the master reopen its log files (SIGUSR1; logrotate)")
    reopen.set_defaults(func=cmd_reopen_logs, plain=_without_config(cmd_reopen_logs))


def _without_config(command: Callable[[PandaConfig | None, argparse.Namespace], int]
                    ) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with the config when it can be read, else without it."""

    def run(args: argparse.Namespace) -> int:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            log.debug("going on without the configuration: %s", exc)
            cfg = None
        return command(cfg, args)

    return run


def _builder(args: argparse.Namespace) -> Callable[..., Master]:
    """``build_master`` bound to this command's arguments, for the service layer."""

    def build(cfg: PandaConfig, **options: Any) -> Master:
        return build_master(cfg, args, **options)

    return build


def _pidfile(args: argparse.Namespace) -> Path:
    return Path(args.pidfile) if args.pidfile else default_pidfile()


def _pidfile_errors(command: Callable[[Any, argparse.Namespace], int]
                   ) -> Callable[[Any, argparse.Namespace], int]:
    """Commands that only read the pid file: an unreadable one is a message, not a trace."""

    @functools.wraps(command)
    def run(cfg: Any, args: argparse.Namespace) -> int:
        try:
            return command(cfg, args)
        except OSError as exc:
            err(f"cannot read the pid file: {exc}")
            return exitcodes.RET_FAILED

    return run


def _validated(cfg: PandaConfig, args: argparse.Namespace, command: str,
               refusal: str) -> int:
    """Validate as ``command`` (``pandaserver.preflight.validate``): print what stops it
    and return its exit status, or log the problems and warnings and return 0."""
    from pandaserver.config.secrets import redact
    from pandaserver.preflight.validate import START, drop_scripts, validate

    # the detached master and its workers run in "/", start --no-detach where it is started
    cwd = os.getcwd() if getattr(args, "no_detach", False) else "/"
    verdict = validate(cfg, command, cwd=cwd if command == START else _master_cwd(args))
    errors = verdict.errors(command)
    for finding in errors:
        err(finding.message)
    if errors:
        err(redact(f"{refusal} (exit {errors[0].code}; panda-daemon check-config lists every"
                   " problem)"))
        return errors[0].code
    notes = [f.message for f in verdict.problems() + verdict.warnings(command)]
    for note in notes:
        log.warning("%s", note)
    args.validation_notes = notes
    drop_scripts(cfg, verdict)
    return exitcodes.RET_OK


def _master_cwd(args: argparse.Namespace) -> str:
    """The running master's working directory (its workers import from there), else "/"."""
    import psutil

    from pandaserver.service.pidfile import lock_holder

    try:
        holder = lock_holder(_pidfile(args))
        if holder is not None and holder > 0:
            return str(psutil.Process(holder).cwd())
    except (OSError, psutil.Error):
        pass
    return "/"


def cmd_start(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.commands.launch import disabled
    from pandaserver.preflight.validate import START

    if disabled(cfg.daemon):
        print(f"panda-daemon is not enabled (enable = False in [daemon] of {cfg.path}):"
              " not starting")
        return exitcodes.RET_OK
    code = _validated(cfg, args, START, "cannot start")
    if code != exitcodes.RET_OK:
        return code
    try:
        plan = plan_start(cfg, args.log_level, _pidfile(args), _builder(args))
    except StartError as exc:
        err(f"cannot start: {exc}")
        return exc.code
    plan.notes = list(getattr(args, "validation_notes", []))
    if getattr(args, "no_detach", False):  # restart has no --no-detach
        return start_foreground(plan, sys.stderr)
    return start_detached(plan, args.wait, sys.stdout, sys.stderr)


@_pidfile_errors
def cmd_stop(cfg: PandaConfig | None, args: argparse.Namespace) -> int:
    timeout = args.timeout
    if timeout is None:
        # without a readable config: [daemon] stop_grace's default (DaemonSettings' field)
        grace = cfg.daemon.stop_grace if cfg is not None else DaemonSettings.stop_grace
        timeout = grace + STOP_MARGIN
    return control.stop(_pidfile(args), timeout, sys.stdout, sys.stderr)


@_pidfile_errors
def cmd_status(cfg: PandaConfig | None, args: argparse.Namespace) -> int:
    return control.status(_pidfile(args), sys.stdout)


def cmd_restart(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.commands.launch import disabled
    from pandaserver.preflight.validate import START

    if not disabled(cfg.daemon):
        # refuse before stopping a master that could not be started again
        code = _validated(cfg, args, START, "not restarting, the running master is left alone")
        if code != exitcodes.RET_OK:
            return code
        try:
            plan_start(cfg, args.log_level, _pidfile(args), _builder(args),
                       check_running=False)
        except StartError as exc:
            err(f"not restarting, the running master is left alone: {exc}")
            return exc.code
    code = cmd_stop(cfg, args)
    if code not in (exitcodes.RET_OK, exitcodes.RET_HISTORY_LOST):  # lost: it did stop
        return code
    return cmd_start(cfg, args) or code


@_pidfile_errors
def cmd_reload(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.preflight.validate import RELOAD

    code = _validated(cfg, args, RELOAD,
                      "not reloading: the running master keeps its configuration")
    if code != exitcodes.RET_OK:
        return code
    return control.send_signal(
        _pidfile(args), signal.SIGHUP,
        f"it re-reads the configuration it was started with and applies what it can live; a"
        f" changed database or uname/gname needs a restart (its log says which: {STDOUT_LOG})",
        sys.stdout, sys.stderr)


@_pidfile_errors
def cmd_reopen_logs(cfg: PandaConfig | None, args: argparse.Namespace) -> int:
    return control.send_signal(_pidfile(args), signal.SIGUSR1, "it reopens its log files",
                               sys.stdout, sys.stderr)

"""``panda-daemon start``: check in the foreground, detach, and return once the master is up.

1. ``plan_start`` checks what can be checked where the operator sees it: the config, the
   service user and group, a master already holding the pid file; it creates missing pid
   and log directories (as root, for the service user).
2. ``start_detached`` forks a child that detaches with python-daemon (double fork, new
   session, ``/`` as working directory, everything but a report pipe closed), then
   ``become_master`` switches user, locks the pid file, opens the log files and builds the
   master. Only then does it write ``ok PID`` on the pipe (or ``error CODE REASON`` at the
   first failure), and the foreground ``start`` returns with that outcome.
3. ``start_foreground`` (``start --no-detach``, for systemd ``Type=notify``) does the same
   without forking and reports readiness to systemd with ``READY=1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pandaserver import exitcodes
from pandaserver.config import ConfigProblem, DaemonSettings, PandaConfig
from pandaserver.service.logfiles import MASTER_LOG_FORMAT, LogFiles, log_records_to_stdout, logdir_of
from pandaserver.service.notify import sd_notify
from pandaserver.service.pidfile import LOCK_DIR_VARIABLE, PidFile, PidFileBusy, lock_holder
from pandaserver.service.privileges import (
    PrivilegeError,
    ServiceUser,
    describe_current_user,
    drop_privileges,
    prepare_directory,
    resolve_user,
)

if TYPE_CHECKING:
    from pandaserver.daemons.master.loop import Master

log = logging.getLogger("panda.service")


class StartError(Exception):
    """The master cannot start; ``code`` is the exit status, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    cfg: PandaConfig
    log_level: str
    pidfile: Path
    logs: LogFiles
    user: ServiceUser | None
    # builds the master of cfg in the process that is to be it, with these options (the
    # command layer's build_master, bound to the command's arguments)
    build: Callable[..., Master]
    notes: list[str] = field(default_factory=list)  # problems and warnings, for the log file

    @property
    def runs_as(self) -> str:
        return self.user.name if self.user is not None else describe_current_user()


def unusable_problems(settings: DaemonSettings) -> list[ConfigProblem]:
    """What keeps a config from starting a service (see ``DaemonSettings.unusable``)."""
    return settings.unusable()


def plan_start(cfg: PandaConfig, log_level: str, pidfile: Path,
               build: Callable[..., Master], *, check_running: bool = True) -> Plan:
    """Everything checked before detaching. Raises ``StartError``."""
    cfg.path = cfg.path.resolve()  # the master re-reads it on SIGHUP, from "/"
    cfg.sources = [path.resolve() for path in cfg.sources]
    settings = cfg.daemon
    unusable = unusable_problems(settings)
    if unusable:
        reasons = "; ".join(str(problem) for problem in unusable)
        raise StartError(exitcodes.RET_CONFIG,
                         f"{reasons} (panda-daemon check-config lists every problem)")
    try:
        logs = LogFiles(logdir_of(cfg))
    except ValueError as exc:
        raise StartError(exitcodes.RET_CONFIG, str(exc)) from None
    try:
        user = resolve_user(settings.uname, settings.gname, str(cfg.path))
    except PrivilegeError as exc:
        raise StartError(exitcodes.RET_USER, str(exc)) from None
    pidfile = pidfile.absolute()
    if check_running:
        holder = lock_holder(pidfile)
        if holder is not None:
            raise StartError(exitcodes.RET_PIDFILE, str(PidFileBusy(pidfile, holder)))
    directories = [(pidfile.parent, exitcodes.RET_PIDFILE), (logs.directory, exitcodes.RET_FAILED)]
    elsewhere = {pidfile.parent: f"choose another pid file: --pidfile FILE, or {LOCK_DIR_VARIABLE}=DIR"
                                 " in the environment (a directory this user can write)",
                 logs.directory: "choose another log directory: [server] logdir in the"
                                 f" configuration {cfg.path}"}
    database = sqlite_file(cfg)
    if database is not None and user is not None:
        from pandaserver.db.base.engine import SQLITE_ELSEWHERE, STATE_DIR_ENV

        # the user's master must find the directory root found, not one of its own
        os.environ.setdefault(STATE_DIR_ENV, str(database.parent))
        directories.append((database.parent, exitcodes.RET_FAILED))
        elsewhere.setdefault(database.parent, SQLITE_ELSEWHERE)
    for directory, code in directories:
        try:
            prepare_directory(directory, user)
        except OSError as exc:
            raise StartError(code, f"cannot create the directory {directory}: {exc.strerror};"
                                   f" {elsewhere.get(directory, '')}".rstrip("; ")) from None
    return Plan(cfg=cfg, log_level=log_level, pidfile=pidfile, logs=logs, user=user,
                build=build)


def become_master(plan: Plan, ready: Callable[[int], None]) -> int:
    """In the process that is to be the master: switch user, lock the pid file, open the log
    files and build the master; call ``ready(pid)``, then run the master's loop.

    Raises ``StartError`` for any failure before ``ready``.
    """
    from pandaserver.daemons.fleet.late import StartupError  # the database layer comes later
    from pandaserver.daemons.master import loop as _master  # noqa: F401 - imported while readable

    # Once the pid file is locked, reload and reopen-logs can find this process: until the
    # master's loop installs its handlers, those signals must not kill it.
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    if plan.user is not None:
        from pandaserver.daemons.containment.cgroups import prepare

        prepare(owner=(plan.user.uid, plan.user.gid))  # the workers' cgroups: made as root
        try:
            drop_privileges(plan.user)
        except PrivilegeError as exc:
            raise StartError(exitcodes.RET_USER, str(exc)) from None
    pidfile = PidFile(plan.pidfile)
    code, reason = exitcodes.RET_OK, ""
    try:
        stale = pidfile.acquire()
    except PidFileBusy as exc:
        raise StartError(exitcodes.RET_PIDFILE, str(exc)) from None
    except OSError as exc:
        raise StartError(exitcodes.RET_PIDFILE, f"cannot write the pid file {plan.pidfile} as"
                         f" user {plan.runs_as}: {exc.strerror}") from None
    try:
        try:
            plan.logs.redirect()
        except OSError as exc:
            raise StartError(exitcodes.RET_FAILED, f"cannot open a log file as user"
                             f" {plan.runs_as}: {exc.strerror}: {exc.filename}") from None
        log_records_to_stdout(plan.log_level, MASTER_LOG_FORMAT)
        log.info("panda-daemon master starting as %s (pid file %s, config %s)",
                 plan.runs_as, plan.pidfile, plan.cfg.path)
        if stale is not None:
            log.warning("replaced the stale pid file %s: pid %d held no lock on it (its master"
                        " is gone)", plan.pidfile, stale)
        for note in plan.notes or [str(problem) for problem in plan.cfg.daemon.problems]:
            log.warning("%s", note)
        if plan.user is not None:
            check_database_writable(plan.cfg, plan.user)
        try:
            master = plan.build(plan.cfg, worker_log_file=str(plan.logs.workers),
                                on_signal={signal.SIGUSR1: plan.logs.reopen})
        except StartupError as exc:
            raise StartError(exc.code, str(exc)) from None
        ready(os.getpid())
        code = master.run()
        reason = master.exit_reason
        return code
    except StartError as exc:
        log.error("cannot start: %s", exc)  # in the log file as well, once it is open
        raise
    finally:
        pidfile.release(code, reason)  # a failure status stays in the file, for stop


# ----- the fleet database ------------------------------------------------------------------


def sqlite_file(cfg: PandaConfig) -> Path | None:
    """The SQLite file holding the fleet tables, when that is the database (None for a
    database server, or for settings the master itself will report)."""
    from pandaserver.db.direct.schemacheck import default_sqlite

    default = default_sqlite(cfg)  # the state directory's file: found without SQLAlchemy
    if default is not None:
        return default.expanduser().absolute()
    try:
        from pandaserver.db.base.engine import DatabaseConfigError, database_url
    except ImportError:
        return None
    try:
        url = database_url(cfg)
    except (DatabaseConfigError, KeyError, ValueError):
        return None
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or \
            database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def check_database_writable(cfg: PandaConfig, user: ServiceUser) -> None:
    """After the switch: SQLite needs to write its file and its directory (journal files)."""
    database = sqlite_file(cfg)
    if database is None:
        return
    directory = database.parent
    files = [path for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"))
             if path.exists()]
    if os.access(directory, os.W_OK | os.X_OK) and \
            all(os.access(path, os.R_OK | os.W_OK) for path in files):
        return
    raise StartError(exitcodes.RET_FAILED,
                     f"user {user.name} cannot write the SQLite database in {directory}: give"
                     f" it the directory (chown -R {user.name}:{user.group} {directory}) or"
                     " set db_url in [daemon]")


# ----- detached ---------------------------------------------------------------------------
def start_detached(plan: Plan, wait: float, out: TextIO, err: TextIO) -> int:
    """Fork, detach, and report what the master wrote on the pipe."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr, out, err):
        stream.flush()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        _exit(_detached_child(plan, write_fd))
    os.close(write_fd)
    try:
        report = _read_report(read_fd, wait)
    finally:
        os.close(read_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)  # the first child exits as soon as it has forked again
    if report is None:
        err.write(f"panda-daemon: the master did not report within {wait:g} s; see"
                  f" {plan.logs.stdout} and {plan.logs.stderr}\n")
        return exitcodes.RET_FAILED
    word, _, rest = report.partition(" ")
    if word == "ok" and rest.isdigit():
        out.write(f"panda-daemon started: master pid {rest} as {plan.runs_as} (pid file"
                  f" {plan.pidfile}; logs in {plan.logs.directory})\n")
        return exitcodes.RET_OK
    code_text, _, reason = rest.partition(" ")
    if word == "error" and code_text.isdigit():
        err.write(f"panda-daemon: cannot start: {reason}\n")
        return int(code_text) or exitcodes.RET_FAILED
    err.write(f"panda-daemon: the master exited before it was up; see {plan.logs.stderr}"
              f" ({report or 'no report'})\n")
    return exitcodes.RET_FAILED


def _read_report(fd: int, wait: float) -> str | None:
    """The master's one-line report; "" when it exited without one; None on timeout."""
    deadline = time.monotonic() + wait
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace").strip()


def _detached_child(plan: Plan, write_fd: int) -> int:
    import daemon  # python-daemon

    def send(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(write_fd, (line.replace("\n", " ") + "\n").encode("utf-8"))
            os.close(write_fd)

    try:
        daemon.DaemonContext(detach_process=True, working_directory="/", umask=0o022,
                             files_preserve=[write_fd], signal_map={}).open()
    except Exception as exc:  # pragma: no cover - fork or setsid failing
        send(f"error {exitcodes.RET_FAILED} cannot detach: {exc}")
        return exitcodes.RET_FAILED
    # From here on this is the master: a new session, no terminal, stdio on /dev/null.
    reported = False

    def ready(pid: int) -> None:
        nonlocal reported
        reported = True
        send(f"ok {pid}")

    try:
        return become_master(plan, ready)
    except StartError as exc:
        send(f"error {exc.code} {exc}")
        return exc.code
    except BaseException as exc:
        if not reported:
            send(f"error {exitcodes.RET_FAILED} {type(exc).__name__}: {exc}")
        traceback.print_exc()  # into panda_daemon_stderr.log once that is open
        return exitcodes.RET_FAILED


def _exit(code: int) -> None:
    """Leave a forked child without running the parent's cleanup twice."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ----- foreground (systemd) ---------------------------------------------------------------
def start_foreground(plan: Plan, err: TextIO) -> int:
    """``start --no-detach``: this process is the master; systemd learns it is ready.

    A failure is told on the standard error the command started with (the journal), even
    when it happens after file descriptor 2 went to the log file.
    """
    err.flush()
    journal = os.fdopen(os.dup(err.fileno()), "w", encoding="utf-8", errors="replace")

    def ready(pid: int) -> None:
        sd_notify(f"READY=1\nMAINPID={pid}\nSTATUS=running as {plan.runs_as}",
                  unset_environment=True)
        journal.close()

    try:
        return become_master(plan, ready)
    except StartError as exc:
        journal.write(f"panda-daemon: cannot start: {exc}\n")
        return exc.code
    finally:
        if not journal.closed:
            journal.close()

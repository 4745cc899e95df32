"""The service's log files under ``logdir`` of ``[server]``.

- ``panda_daemon_stdout.log``: the master's standard output, where its log records go (as
  the original daemon's did);
- ``panda_daemon_stderr.log``: the master's standard error (warnings, tracebacks, anything
  written to file descriptor 2);
- ``panda-daemons.log``: the workers' and scripts' records, each line labelled with the
  script and run (workers reopen it themselves when it is moved).

The master points file descriptors 1 and 2 at the first two files, and again on SIGUSR1,
so logrotate can move them without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pandaserver.config import PandaConfig

log = logging.getLogger("panda.service")

MASTER_LOG_FORMAT = "%(asctime)s %(levelname)s master pid %(process)d %(name)s: %(message)s"

DEFAULT_LOGDIR = Path("/var/log/panda")
STDOUT_LOG = "panda_daemon_stdout.log"
STDERR_LOG = "panda_daemon_stderr.log"
WORKER_LOG = "panda-daemons.log"


def logdir_of(cfg: PandaConfig) -> Path:
    """``logdir`` of ``[server]``, else ``/var/log/panda``; ValueError names a bad value."""
    try:
        value = cfg.server_value("logdir")
    except KeyError as exc:
        raise ValueError(f"{cfg.path} [server] key 'logdir': refers to environment variable"
                         f" ${exc.args[0]}, which is not set") from None
    if value is not None and not value.strip():
        raise ValueError(f"{cfg.path} [server] key 'logdir': must not be empty")
    path = Path(value.strip()) if value else DEFAULT_LOGDIR
    return path if path.is_absolute() else cfg.path.parent / path


@dataclass(frozen=True)
class LogFiles:
    directory: Path

    @property
    def stdout(self) -> Path:
        return self.directory / STDOUT_LOG

    @property
    def stderr(self) -> Path:
        return self.directory / STDERR_LOG

    @property
    def workers(self) -> Path:
        return self.directory / WORKER_LOG

    def redirect(self) -> None:
        """Open (append, create) the master's two files and put them on descriptors 1 and 2.

        Raises OSError naming the file; then nothing has changed.
        """
        opened: list[int] = []
        try:  # the workers' file too, so that a start fails here rather than in every worker
            for path in (self.stdout, self.stderr, self.workers):
                opened.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                      0o644))
        except OSError:
            for fd in opened:
                os.close(fd)
            raise
        os.close(opened.pop())
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for target, fd in zip((1, 2), opened, strict=True):
            os.dup2(fd, target)  # inheritable: workers start with the same files
            os.close(fd)

    def reopen(self) -> None:
        """SIGUSR1: continue in fresh files (logrotate has moved the old ones)."""
        try:
            self.redirect()
        except OSError as exc:
            log.error("cannot reopen the log files, still writing to the old ones: %s", exc)
            return
        log.info("log files reopened: %s, %s", self.stdout, self.stderr)


def log_records_to_stdout(level: str, fmt: str) -> None:
    """The master's records go to its standard output (``panda_daemon_stdout.log``), each
    line one write to file descriptor 1 (so a reopen by ``dup2`` is followed); a line that
    cannot be written (a full disk) is dropped and counted, never raised (``logsink``)."""
    from pandaserver.config.secrets import redact_handler
    from pandaserver.daemons.base.logsink import MASTER, SafeHandler

    handler = redact_handler(SafeHandler(stream="stdout", counter=MASTER))
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

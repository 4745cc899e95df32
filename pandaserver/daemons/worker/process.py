"""The worker process: import the script modules, run one assignment at a time, report back.

Started by the master as ``python -m pandaserver.daemons.worker``; stateless: everything it
needs for a run arrives in the ``run`` message.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any

from pandaserver.config.secrets import redact_handler, register
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import KILL_GRACE
from pandaserver.daemons.base.logsink import DropCounter, SafeHandler
from pandaserver.daemons.containment.processes import set_title
from pandaserver.daemons.containment.tracker import RUN_VAR, run_marker
from pandaserver.daemons.worker import capture
from pandaserver.daemons.worker.invoke import describe_import_error, import_script, run_main
from pandaserver.daemons.worker.lock_pool import LockPool
from pandaserver.daemons.worker.tbuf import make_tbuf, set_context
from pandaserver.daemons.worker.watchdog import before_exit, watch_lifeline

log = logging.getLogger("panda.worker")
CHANNEL_CLOSED = -1  # serve() saw end-of-file on the master channel

LOG_FORMAT = (
    "%(asctime)s %(levelname)s [%(script)s run %(run)s] worker %(worker)s pid %(process)d"
    " %(name)s: %(message)s"
)


class Worker:
    def __init__(self, conn: Connection, index: int, server: str,
                 config_path: str | None = None, log_drops: DropCounter | None = None) -> None:
        self.conn = conn
        self.log_drops = log_drops or DropCounter()
        self.index = index
        self.server = server
        self.package = ""
        self.modules: dict[str, ModuleType] = {}
        self.lock_pool = LockPool()
        self.config_path = config_path
        self.tbuf = make_tbuf(config_path)

    def serve(self) -> int:
        set_title(f"worker {self.index} starting")
        message = protocol.recv(self.conn)
        if message["op"] != "init":
            raise protocol.ProtocolError(f"expected init, got {message['op']}")
        self.package = message["package"]
        for secret in message.get("secrets") or ():
            register(secret)
        if message.get("database"):  # the master's database, whatever the file says now
            self.tbuf = make_tbuf(self.config_path, message["database"])
        errors = {}
        for module in message["modules"]:
            # said first: should the import kill this process, the master knows which did
            protocol.send(self.conn, "importing", module=module)
            error = self._import(module)
            if error is not None:
                errors[module] = error
        protocol.send(self.conn, "ready", pid=os.getpid(), import_errors=errors,
                      **self._log_report())
        while True:
            set_title(f"worker {self.index} idle")
            try:
                message = protocol.recv(self.conn)
            except EOFError:
                return CHANNEL_CLOSED
            if message["op"] == "exit":
                log.debug("worker %s asked to exit", self.index)
                return 0
            if message["op"] == "run":
                self._run(message)
            else:
                log.error("worker %s ignored unknown message %r", self.index, message)

    def _import(self, module: str) -> str | None:
        if module in self.modules:
            return None
        try:
            self.modules[module] = import_script(self.package, module)
        except BaseException as exc:
            return describe_import_error(self.package, module, exc)
        return None

    def _run(self, message: dict[str, Any]) -> None:
        name, run_id = message["name"], message["run"]
        module_name = message["module"]
        set_title(f"worker {self.index} running {name}")
        capture.set_current(name, str(run_id))
        set_context(self.tbuf, name, run_id, message.get("generation"))
        os.environ[RUN_VAR] = run_marker(run_id, name)  # inherited by all the run starts
        started = time.monotonic()
        error = self._import(module_name)
        import_failed = error is not None
        if error is not None:
            log.error("%s", error)
            outcome = protocol.FAILED
        else:
            argv = (name, *message.get("arguments", []))
            kwargs = {"argv": argv, "tbuf": self.tbuf, "lock_pool": self.lock_pool}
            result = run_main(self.modules[module_name], kwargs,
                              loop=bool(message.get("loop")), period=float(message["period"]))
            outcome, error = result.outcome, result.error
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        ended = time.monotonic()
        os.environ.pop(RUN_VAR, None)
        set_context(self.tbuf, None, None, None)
        capture.clear_current()
        protocol.send(self.conn, "done", run=run_id, outcome=outcome, error=error,
                      started=started, ended=ended, import_failed=import_failed,
                      **self._log_report())

    def _log_report(self) -> dict[str, Any]:
        """Log lines this worker dropped since its last message, and why it drops them now
        (None: it writes them)."""
        dropped, error = self.log_drops.report()
        return {"log_dropped": dropped, "log_error": error}


def setup_logging(stream_fd: int, index: int, level: str,
                  log_file: str | None = None) -> DropCounter:
    """Worker records go to ``log_file`` when given (reopened when logrotate moves it),
    else to the master's stderr. A line that cannot be written is dropped and counted in
    the returned counter, never raised and never reported on ``sys.stderr`` (the capture
    stream, which would log again); the master hears of it with each message."""
    handler = SafeHandler(path=log_file) if log_file else SafeHandler(fd=stream_fd)
    handler.addFilter(capture.RunLabelFilter())
    handler.addFilter(_WorkerFilter(index))
    redact_handler(handler)  # the secrets the master registered come with the init message
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler.counter


class _WorkerFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pandaserver.daemons.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lifeline", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", default=None)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    threading.Thread(target=watch_lifeline, args=(args.lifeline, KILL_GRACE), name="lifeline",
                     daemon=True).start()
    original_stderr = capture.redirect_fd_output()
    drops = setup_logging(original_stderr, args.index, args.log_level, args.log_file)
    if args.log_file:  # records go to the file: keep no handle on the master's stderr, so a
        os.close(original_stderr)  # rotated stderr log is not held open by workers
    sys.stdout = capture.LineLogger("stdout", logging.INFO)
    sys.stderr = capture.LineLogger("stderr", logging.WARNING)
    worker = Worker(Connection(args.fd), args.index, args.server_name, args.config, drops)
    closed = False  # the master channel closed (end of file or an error on it)
    try:
        code = worker.serve()
    except (EOFError, protocol.ProtocolError, OSError) as exc:
        closed, code, error = True, 1, str(exc)
    else:
        closed, error = code == CHANNEL_CLOSED, "end of file"
    finally:  # every way out but a signal; an unexpected error too
        before_exit(args.lifeline, channel_closed=closed)
    if closed:  # and the master still there
        log.error("worker %s lost its master channel: %s", args.index, error)
        return 1
    return code

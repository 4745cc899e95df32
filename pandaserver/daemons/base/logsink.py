"""Log handlers that never fail: a log line that cannot be written is dropped and counted.

A full log disk (or a file that cannot be opened) must never break a run or the master.
``logging``'s own handlers report a failed write by printing a traceback to
``sys.stderr``; in a worker that is the capture stream, which logs again, which fails
again: ``print()`` ended in RecursionError. ``SafeHandler`` instead:

- writes each record with one ``os.write`` (plus retries of a short write) to a file
  descriptor (``fd``: the master's stdout or stderr, kept by number so a ``dup2`` after
  logrotate is followed) or to a file (``path``, opened append-only, reopened when
  logrotate moved it, as ``WatchedFileHandler`` does; a file that cannot be opened is
  tried again at the next record);
- on any error drops the record and counts it in its ``DropCounter``, never raises, never
  writes to ``sys.stderr``, and drops any record logged while it is writing (re-entry);
- starts a new line after a torn one, and after a run of drops writes one line saying how
  many lines were dropped and why, as soon as it can write again.

An *episode* runs from the first drop to the next successful write; ``DropCounter`` calls
``on_episode`` once when one begins (the master uses it to say so on stderr).

The master keeps two counters here: ``MASTER`` (its own records) and ``WORKERS`` (what
its workers report with each ``ready`` and ``done`` message), which the status file,
``panda-daemon status``, ``fleet`` and ``/metrics`` show.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

NOTICE_LOGGER = "panda.logging"


class DropCounter:
    """Dropped log lines: thread-safe counts and the current episode."""

    def __init__(self, on_episode: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.on_episode = on_episode
        self.dropped = 0  # since the start
        self.error: str | None = None  # the error of the current episode, None when writing
        self.episode_dropped = 0
        self._reported = 0

    @property
    def failing(self) -> bool:
        return self.error is not None

    def drop(self, error: str) -> None:
        with self._lock:
            self.dropped += 1
            self.episode_dropped += 1
            started = self.error is None
            self.error = error
        if started and self.on_episode is not None:
            try:
                self.on_episode(error)
            except Exception:  # a notice must not break logging
                pass

    def wrote(self) -> tuple[int, str] | None:
        """A write succeeded: the (count, error) of the episode it ends, if one ran."""
        with self._lock:
            if self.error is None:
                return None
            ended = (self.episode_dropped, self.error)
            self.error = None
            self.episode_dropped = 0
            return ended

    def report(self) -> tuple[int, str | None]:
        """Lines dropped since the last report, and the current error (a worker sends this
        to its master)."""
        with self._lock:
            delta, self._reported = self.dropped - self._reported, self.dropped
            return delta, self.error

    def snapshot(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "error": self.error}


class SafeHandler(logging.Handler):
    """``fd``: a file descriptor; ``path``: a file; ``stream`` (``"stdout"`` or
    ``"stderr"``): the process's standard stream, written to its descriptor (1 or 2) while
    ``sys.<stream>`` is the original one, else through whatever replaced it (a test's
    capture, an embedding program's stream), each failure dropped and counted alike."""

    def __init__(self, *, fd: int | None = None, path: str | None = None,
                 stream: str | None = None, counter: DropCounter | None = None) -> None:
        if sum(x is not None for x in (fd, path, stream)) != 1:
            raise ValueError("SafeHandler needs exactly one of fd, path and stream")
        if stream not in (None, "stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got: {stream!r}")
        super().__init__()
        self.fd = fd if stream is None else (1 if stream == "stdout" else 2)
        self.path = path
        self.stream = stream
        self.counter = counter or DropCounter()
        self._file: int | None = None
        self._file_id: tuple[int, int] | None = None
        self._torn = False
        self._inside = threading.local()

    @property
    def where(self) -> str:
        if self.path is not None:
            return self.path
        return self.stream if self.stream is not None else f"file descriptor {self.fd}"

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._inside, "active", False):
            self.counter.drop("a log record was written while writing another")
            return
        self._inside.active = True
        try:
            try:
                text = self.format(record) + "\n"
            except Exception as exc:  # a bad format argument: drop it, say why
                text = (f"{record.levelname} {record.name}: unformattable log record"
                        f" ({type(exc).__name__}: {exc}): {record.msg!r}\n")
            self._write(text)
        finally:
            self._inside.active = False

    def _write(self, text: str) -> None:
        try:
            self._put(("\n" if self._torn else "") + text)
        except Exception as exc:  # OSError above all; anything a replaced stream raises
            error = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.counter.drop(f"{self.where}: {error}")
            return
        self._torn = False
        ended = self.counter.wrote()
        if ended is not None:
            count, error = ended
            notice = logging.LogRecord(
                NOTICE_LOGGER, logging.WARNING, __file__, 0,
                "%d log line(s) were dropped while they could not be written (%s)",
                (count, error), None)
            try:
                self._put(self.format(notice) + "\n")
            except Exception:
                pass

    def _put(self, text: str) -> None:
        """Write ``text`` whole, or raise."""
        if self.stream is not None:
            current = getattr(sys, self.stream)
            if current is not getattr(sys, f"__{self.stream}__"):
                current.write(text)
                current.flush()
                return
        view = memoryview(text.encode("utf-8", errors="replace"))
        fd = self._target()
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError("the write wrote nothing")
            if written < len(view):
                self._torn = True
            view = view[written:]

    def _target(self) -> int:
        if self.fd is not None:
            return self.fd
        assert self.path is not None
        if self._file is not None:
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._file_id
            except OSError:
                moved = True
            if not moved:
                return self._file
            self._close_file()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        self._file, self._file_id = fd, (st.st_dev, st.st_ino)
        return fd

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                os.close(self._file)
            except OSError:
                pass
            self._file = self._file_id = None

    def close(self) -> None:
        self._close_file()
        super().close()


def stderr_notice(what: str) -> Callable[[str], None]:
    """An ``on_episode`` that writes one line straight to file descriptor 2 (best effort:
    the stderr file may be on the same full disk)."""

    def notice(error: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = (f"{stamp} panda-daemon pid {os.getpid()}: {what} cannot be written ({error});"
                " they are dropped and counted (panda-daemon status shows how many)\n")
        try:
            os.write(2, line.encode("utf-8", errors="replace"))
        except OSError:
            pass

    return notice


class WorkerDrops:
    """The master's view of its workers' dropped log lines (from their messages)."""

    def __init__(self, on_episode: Callable[[str], None] | None = None) -> None:
        self.dropped = 0
        self.failing: dict[int, str] = {}  # worker index -> its current error
        self.episode_dropped = 0
        self.on_episode = on_episode

    @property
    def error(self) -> str | None:
        return next(iter(self.failing.values()), None)

    def update(self, index: int, message: dict[str, Any]) -> tuple[int, str] | None:
        """Take a worker's report (``log_dropped``, ``log_error`` of its message); return
        (lines dropped, error) when the last failing worker writes again."""
        delta = message.get("log_dropped")
        if isinstance(delta, int) and not isinstance(delta, bool) and delta > 0:
            self.dropped += delta
            self.episode_dropped += delta
        error = message.get("log_error")
        was_failing = bool(self.failing)
        if isinstance(error, str) and error:
            self.failing[index] = error
            if not was_failing and self.on_episode is not None:
                self.on_episode(error)
        elif "log_error" in message:
            self.failing.pop(index, None)
        if was_failing and not self.failing:
            ended = (self.episode_dropped, "")
            self.episode_dropped = 0
            return ended
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "error": self.error}


MASTER = DropCounter(on_episode=stderr_notice("log lines"))
WORKERS = WorkerDrops(on_episode=stderr_notice("the workers' log lines"))
log = logging.getLogger("panda.master")


def worker_report(index: int, message: dict[str, Any]) -> None:
    """The master got a message of worker ``index``: count the log lines it dropped."""
    failing = bool(WORKERS.failing)
    ended = WORKERS.update(index, message)
    if not failing and WORKERS.failing:
        log.error("worker %d cannot write its log lines (%s): they are dropped and counted",
                  index, WORKERS.error)
    if ended is not None:
        log.warning("workers write their log lines again; %d line(s) were dropped",
                    ended[0])

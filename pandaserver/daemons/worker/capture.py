"""Label everything a script prints or logs with its name and run.

- Python-level ``print``/``sys.stdout``/``sys.stderr`` writes become log records at once,
  in the script's thread, so the label is exact.
- Output written straight to file descriptors 1 and 2 (C code, child processes) goes through a
  pipe that a reader thread turns into records labelled with the run current at that moment.
- Every record passes ``RunLabelFilter``, which adds ``script`` and ``run`` attributes.
"""

from __future__ import annotations

import io
import logging
import os
import selectors
import threading
from dataclasses import dataclass


@dataclass
class RunLabel:
    script: str = "-"
    run: str = "-"


CURRENT = RunLabel()
OUTPUT_LOGGER = "panda.script"


class RunLabelFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "script"):
            record.script = CURRENT.script
            record.run = CURRENT.run
        return True


def set_current(script: str, run: str) -> None:
    CURRENT.script = script
    CURRENT.run = run


def clear_current() -> None:
    set_current("-", "-")


class LineLogger(io.TextIOBase):
    """A text stream that logs each complete line at INFO (stdout) or WARNING (stderr)."""

    def __init__(self, stream: str, level: int) -> None:
        self._logger = logging.getLogger(f"{OUTPUT_LOGGER}.{stream}")
        self._level = level
        self._buffer = ""
        self._lock = threading.Lock()
        self._inside = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        self._log(lines)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._log([rest])

    def _log(self, lines: list[str]) -> None:
        """Log each line; never from inside itself (a handler a script added that writes
        to this stream would log again, forever): such lines are dropped."""
        if getattr(self._inside, "active", False):
            return
        self._inside.active = True
        try:
            for line in lines:
                self._logger.log(self._level, "%s", line)
        finally:
            self._inside.active = False

    def isatty(self) -> bool:
        return False


def redirect_fd_output() -> int:
    """Point fds 1 and 2 at pipes read by a thread; return a dup of the original stderr."""
    original = os.dup(2)
    os.set_inheritable(original, False)
    selector = selectors.DefaultSelector()
    for fd, name, level in ((1, "stdout", logging.INFO), (2, "stderr", logging.WARNING)):
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        selector.register(read_end, selectors.EVENT_READ, (name, level))
    thread = threading.Thread(target=_pump, args=(selector,), name="fd-capture", daemon=True)
    thread.start()
    return original


def _pump(selector: selectors.BaseSelector) -> None:
    partial: dict[int, bytes] = {}
    while selector.get_map():
        for key, _ in selector.select():
            fd = key.fd
            name, level = key.data
            chunk = os.read(fd, 65536)
            if not chunk:
                selector.unregister(fd)
                continue
            data = partial.pop(fd, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                partial[fd] = rest
            logger = logging.getLogger(f"{OUTPUT_LOGGER}.{name}")
            for line in lines:
                logger.log(level, "%s", line.decode(errors="replace"))

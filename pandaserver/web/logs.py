"""The recent log records of one script, from the workers' log file (``panda-daemon logs``).

Workers of a master started as a service write ``<logdir>/panda-daemons.log``, each record
labelled ``[NAME run N]`` (see ``pandaserver.daemons.worker.process.LOG_FORMAT``); a record's
continuation lines (a traceback, a script's multi-line output) follow it without a label.
The file is read backwards in blocks, so the last records of a large file cost little.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

BLOCK = 64 * 1024
# a record starts with the logging time stamp: "2026-11-21 10:53:37,761 "
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ ")


def _lines_backwards(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        rest = b""
        while position > 0:
            step = min(BLOCK, position)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines.pop(0)  # may be cut: completed by the next block
            for line in reversed(lines):
                yield line.decode("utf-8", errors="replace")
        yield rest.decode("utf-8", errors="replace")


def script_records(path: Path, name: str, lines: int, grep: str | None = None) -> list[str]:
    """The last ``lines`` records of script ``name`` (oldest first), each with its
    continuation lines; only those containing ``grep`` when given. OSError when the file
    cannot be read."""
    label = f"[{name} run "
    found: list[str] = []
    pending: list[str] = []  # continuation lines seen (backwards) before their record
    for line in _lines_backwards(path):
        start = RECORD_START.match(line)
        if start is None:
            if line:
                pending.append(line)
            continue
        _level, _, labelled = line[start.end():].partition(" ")
        if labelled.startswith(label):
            record = "\n".join([line, *reversed(pending)])
            if grep is None or grep in record:
                found.append(record)
                if len(found) >= lines:
                    break
        pending = []
    found.reverse()
    return found

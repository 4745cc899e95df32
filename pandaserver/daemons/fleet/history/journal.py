"""Run starts and ends the database does not have yet, kept in a file so a killed master
loses none.

``<state dir>/history-journal-<server>.jsonl``: before a run's start or end is queued for
the database, its write is appended here (one line, the spool's encoding: ``spool.py``),
so a master killed with ``kill -9`` just after a dispatch, just after a run ended, or during
an outage, leaves those writes behind. The next master of that server replays the file at
its start, before it closes the previous master's open runs as ``lost``: a run that ended
``ok`` is written ``ok``, not ``lost``. The writes are keyed: a start never overwrites a
row that exists (a finished one above all), an end only a row still open, and an end is
counted (``daemon_run_count``) only by the write that ends the row; so a replay, even of a
file the database already has, adds no row and no count.

The master tells the journal which writes the database now has (``written``: a run's end
makes its start's line needless too); when it holds none still unwritten the file is
truncated (one call), and when it grows past
``COMPACT_BYTES`` while some are unwritten it is rewritten with those alone. An append is a
plain ``write`` with no fsync: it survives the death of the process (the data is in the
kernel's page cache), not a crash of the machine, which loses the lines of the last few
seconds that the kernel had not flushed yet (the runs those lines named then have no row).
A journal that cannot be written is logged once and then not used (as before it existed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.fleet.history.spool import Spool, Stamped, encode
from pandaserver.db.stores.runrecords import RunStart

log = logging.getLogger("panda.master")

COMPACT_BYTES = 1 << 20  # rewrite a journal this big that still holds unwritten runs

Key = tuple[Any, Any, str]  # (master id, run id, "start" or "end")


def journal_path(state_dir: Path, server: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in server)
    return state_dir / f"history-journal-{safe}.jsonl"


def run_start(run: Run, server: str, master_id: str, master_pid: int) -> RunStart:
    """The ``running`` row of a run just dispatched (journaled, then queued)."""
    return RunStart(script=run.script, server=server, master_id=master_id,
                    master_pid=master_pid, run_id=run.id, pid=run.pid,
                    generation=run.generation, due_before_start=max(0.0, run.dispatched - run.due))


def key_of(item: Any) -> Key | None:
    """A keyed write's line in the journal: a run's start, or its end (a whole run)."""
    master_id, run_id = getattr(item, "master_id", None), getattr(item, "run_id", None)
    if master_id is None or run_id is None:
        return None
    return (master_id, run_id, "start" if isinstance(item, RunStart) else "end")


class Journal:
    def __init__(self, path: Path, monotonic: Callable[[], float],
                 wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._monotonic = monotonic
        self._wall = wall
        self._fd: int | None = None
        self._broken = False
        self._size = 0
        self.unwritten: dict[Key, bytes] = {}  # the lines of the runs the database lacks

    def load(self) -> list[Stamped] | None:
        """The writes a killed master left (as ``Spool.load``: [] when there is none, None
        when the file cannot be read); they count as unwritten until ``written``."""
        rows = Spool(self.path, self._wall).load(self._monotonic())
        if rows:
            wall = self._wall()
            for _, item in rows:
                key = key_of(item)
                if key is not None:
                    self.unwritten[key] = encode(item, wall).encode() + b"\n"
        elif rows == []:
            self._truncate()
        return rows

    def append(self, made: float, item: Any) -> None:
        """Keep the start of a run just dispatched, or the end of one that just ended (made
        at monotonic ``made``)."""
        key = key_of(item)
        if key is None or self._broken:
            return
        line = encode(item.aged(max(0.0, self._monotonic() - made)), self._wall()).encode()
        line += b"\n"
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._size = os.fstat(self._fd).st_size
            os.write(self._fd, line)
        except OSError as exc:
            self._give_up(exc)
            return
        self._size += len(line)
        self.unwritten[key] = line

    def written(self, items: Iterable[Any]) -> None:
        """The database has these writes (or refused them for good): their runs need no
        line any more. Truncates the file when none is left unwritten."""
        if not self.unwritten:
            return
        for item in items:
            key = key_of(item)
            if key is not None:
                self.unwritten.pop(key, None)
                if key[2] == "end":  # the row is whole: its start is needless too
                    self.unwritten.pop((key[0], key[1], "start"), None)
        if not self.unwritten:
            self._truncate()
        elif self._size > COMPACT_BYTES:
            self._compact()

    def close(self) -> None:
        """At a clean stop: what is unwritten stays in the file (the spool has it too)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if not self.unwritten:
            self._truncate()

    def _truncate(self) -> None:
        if self._size == 0 and self._fd is not None:
            return
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
            elif os.path.lexists(self.path):
                self.path.unlink()
        except OSError as exc:
            self._give_up(exc)
            return
        self._size = 0

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self.unwritten.values())
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path)
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._give_up(exc)
            return
        self._size = len(data)

    def _give_up(self, exc: OSError) -> None:
        if not self._broken:
            log.error("history journal %s cannot be written (%s): a run started before a"
                      " kill -9 of this master may be left with no history row; make the"
                      " state directory writable with free space", self.path,
                      exc.strerror or exc)
        self._broken = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

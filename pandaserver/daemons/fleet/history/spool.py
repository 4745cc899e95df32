"""History the master could not write before it stopped, kept in a file for the next start.

``<state dir>/history-spool-<server>.jsonl``: one JSON object per line, one history write
each (a run's start, its end, or a whole run), with the wall-clock time (``wall``) at which
its ``*_ago`` seconds were counted. The master writes the file at its stop (atomically:
write, fsync, rename) with everything it could not write to the database; the next master
of that server reads it at its start and writes those rows, moving each back by the wall
time that passed since, so rows keep their real times (to the accuracy of this host's clock
across the restart). The file is removed once every row in it is written; writes are keyed,
so a row replayed twice (the master was killed before it removed the file) is still one row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from pandaserver.db.stores.runrecords import PendingItem, RunEnd, RunRecord, RunStart

log = logging.getLogger("panda.master")

VERSION = 1
KINDS: dict[str, type[RunStart] | type[RunRecord] | type[RunEnd]] = {
    "start": RunStart, "run": RunRecord, "end": RunEnd}
Stamped = tuple[float, PendingItem]


def spool_path(state_dir: Path, server: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in server)
    return state_dir / f"history-spool-{safe}.jsonl"


def _kind(item: PendingItem) -> str:
    return "start" if isinstance(item, RunStart) else "run" if isinstance(item, RunRecord) \
        else "end"


def encode(item: PendingItem, wall: float) -> str:
    data: dict[str, Any] = {"v": VERSION, "kind": _kind(item), "wall": wall, **asdict(item)}
    if isinstance(data.get("due_at"), datetime):
        data["due_at"] = data["due_at"].isoformat()
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def decode(line: str) -> tuple[float, PendingItem]:
    """(wall time, the write) of one line; ValueError/TypeError/KeyError when malformed."""
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} spool line")
    cls = KINDS[data["kind"]]
    wall = float(data["wall"])
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    if isinstance(values.get("due_at"), str):
        values["due_at"] = datetime.fromisoformat(values["due_at"])
    return wall, cls(**values)


class Spool:
    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall

    def save(self, rows: Sequence[Stamped], now: float) -> None:
        """Replace the file with ``rows`` (made at monotonic times; ``now`` is the monotonic
        time of this call); no rows: remove it. Raises OSError naming the file."""
        if not rows:
            self.remove()
            return
        wall = self._wall()
        text = "".join(encode(item.aged(now - made), wall) + "\n" for made, item in rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def load(self, now: float) -> list[Stamped] | None:
        """The rows of the file, stamped as made at monotonic ``now`` and moved back by the
        wall time since they were saved; [] when there is no file; None when it cannot be
        read (logged; the file is left as it is). Malformed lines are logged and skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read the history spool %s: %s; it is left as it is", self.path, exc)
            return None
        wall_now = self._wall()
        rows: list[Stamped] = []
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                wall, item = decode(line)
                rows.append((now, item.aged(wall_now - wall)))
            except (ValueError, TypeError, KeyError):
                bad += 1
        if bad:
            log.error("history spool %s: %d malformed line(s) skipped", self.path, bad)
        return rows

    def unwritable(self) -> str | None:
        """Why the spool file could not be written now (its directory cannot be created or
        written: read-only, full, not ours), or None when a probe write succeeds."""
        probe = self.path.with_name(self.path.name + ".probe")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write("panda-daemon history spool probe\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            return exc.strerror or str(exc)
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return None

    def remove(self) -> None:
        if not os.path.lexists(self.path):  # on a read-only directory unlink says EROFS
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove the history spool %s (its rows are written; a replay"
                      " writes nothing twice): %s", self.path, exc)

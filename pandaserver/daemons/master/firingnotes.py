"""Which cron firing each script of this host waits for, written the moment a firing is
dispatched (``<state dir>/firings-<server>.json``).

The status file says the same, but it is written by a thread at most once a second: a
master killed in that second left a status file that still waited for the firing it had
just dispatched, so the next master here ran that firing again ("missed while no master
ran"). This small file is rewritten on the loop's thread right after each cron hand-over
(a write and a rename of a few hundred bytes, at most once a minute per cron script), so
that window shrinks to the hand-over itself. A master's start reads both files
(``remembered_firings``): for a schedule both name, the later firing is the newer truth
(firings only move forward under one schedule); where they name different schedules, the
status file's (rewritten within a second of a reload) wins.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pandaserver.config.scripts import DaemonSpec

log = logging.getLogger(__name__)

Remembered = dict[str, tuple[str, str, float]]  # name -> expression, zone, next firing


def notes_path(status_file: Path) -> Path:
    """``firings-<server>.json`` beside ``status-<server>.json``."""
    name = status_file.name
    stem = name[len("status-"):] if name.startswith("status-") else name
    return status_file.with_name("firings-" + stem)


class FiringNotes:
    """The loop's record of the firings its cron scripts wait for; owns its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._firings: dict[str, list[Any]] = {}
        self._failed = False

    def waiting(self, spec: DaemonSpec, firing: float) -> None:
        """Cron script ``spec`` now waits for ``firing``: written before anything else can
        happen to this master."""
        if spec.cron is None:
            return
        entry = [spec.cron.expression, spec.cron.zone, firing]
        if self._firings.get(spec.name) == entry:
            return
        self._firings[spec.name] = entry
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self._firings, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write %s (a cron firing dispatched just before a kill "
                            "may run again at the next start): %s", self.path, exc)
            self._failed = True


def read_notes(path: Path) -> Remembered:
    """What ``FiringNotes`` wrote (nothing when the file is missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found: Remembered = {}
    if isinstance(data, dict):
        for name, entry in data.items():
            if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) \
                    and isinstance(entry[1], str) and isinstance(entry[2], int | float):
                found[str(name)] = (entry[0], entry[1], float(entry[2]))
    return found


def merge(status: Remembered, notes: Remembered) -> Remembered:
    """The status file's firings, moved forward by the notes' where they name the same
    schedule; a script only the notes name is taken from them."""
    merged = dict(status)
    for name, noted in notes.items():
        known = merged.get(name)
        if known is None or (known[:2] == noted[:2] and noted[2] > known[2]):
            merged[name] = noted
    return merged

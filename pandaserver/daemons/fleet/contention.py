"""Refused lease attempts of this master, per sync script, kept in memory.

A sync script on K servers is refused on K - 1 of them every period. Those refusals are
counted here (and, fleet-wide, on the lease row: ``daemon_lease.contended``), never
written to the run history: the history holds real runs only. The status file shows
these counters (``panda-daemon status``); they start at zero when the master starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Contention:
    """``refused``: grant attempts the database refused here (held elsewhere, or already
    served fleet-wide this period); ``held``: of those, the ones refused because another
    server held the lease, the latest such one ``holder`` at ``holder_at``; ``last_at``:
    the latest refusal. Times are this master's monotonic clock."""

    refused: int = 0
    held: int = 0
    holder: str | None = None
    holder_at: float | None = None
    last_at: float | None = None

    def note(self, holder: str | None, now: float) -> bool:
        """Count one refusal; True when ``holder`` is a server not named by the last one."""
        self.refused += 1
        self.last_at = now
        if holder is None:
            return False
        changed = holder != self.holder
        self.held += 1
        self.holder, self.holder_at = holder, now
        return changed

    def report(self, now: float) -> dict[str, Any]:
        """The status file's figures ("seconds ago" as of ``now``)."""
        return {
            "refused": self.refused, "held_elsewhere": self.held, "holder": self.holder,
            "holder_ago": None if self.holder_at is None else round(now - self.holder_at, 3),
            "last_ago": None if self.last_at is None else round(now - self.last_at, 3),
        }


class Contentions:
    """Every sync script's ``Contention``; ``total`` changes with each refusal (the status
    file's change signature reads it: O(1))."""

    def __init__(self) -> None:
        self.scripts: dict[str, Contention] = {}
        self.total = 0

    def note(self, name: str, holder: str | None, now: float) -> bool:
        self.total += 1
        return self.scripts.setdefault(name, Contention()).note(holder, now)

    def report(self, name: str, now: float) -> dict[str, Any] | None:
        found = self.scripts.get(name)
        return found.report(now) if found is not None else None

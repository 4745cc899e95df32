"""The seam between the master and fleet-wide leases for ``sync`` scripts.

The master asks ``acquire`` before dispatching a sync script and calls ``release`` when the
run ends. ``LocalLeases`` grants everything: a single server needs no fleet agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pandaserver.config.scripts import DaemonSpec


@dataclass(frozen=True)
class LeaseDecision:
    granted: bool
    generation: int | None = None
    wait: float = 0.0  # seconds until it is worth asking again, when not granted
    holder: str | None = None
    unavailable: bool = False  # the lease store could not be reached


class LeaseManager(Protocol):
    def acquire(self, spec: DaemonSpec) -> LeaseDecision: ...

    def release(self, name: str, generation: int | None) -> None: ...


class LocalLeases:
    """Every script may run: the right answer for one server with no shared database."""

    def acquire(self, spec: DaemonSpec) -> LeaseDecision:
        return LeaseDecision(granted=True)

    def release(self, name: str, generation: int | None) -> None:
        return None

"""``RunContext``: which run a ``tbuf`` serves. Kept apart from ``taskbuffer.py`` so a worker
can label runs without importing SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """Which run a TaskBuffer serves (all None outside a run)."""

    script: str | None = None
    run_id: int | None = None
    generation: int | None = None

"""What a worker hands to scripts as ``tbuf``: the run's context and shared services.

The database-backed ``TaskBuffer`` (pandaserver.taskbuffer) is used when available;
this module keeps the worker independent of how it is built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunContext:
    """Which run a script is in: lets a script label and fence its own writes."""

    script: str
    run_id: int
    server: str
    generation: int | None = None


class LocalServices:
    """A ``tbuf`` with the run context and no database."""

    def __init__(self) -> None:
        self.context: RunContext | None = None

    def set_context(self, context: RunContext | None) -> None:
        self.context = context

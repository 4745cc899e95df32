"""The ``tbuf`` handed to scripts: database access plus PanDA's process-lock calls."""

from __future__ import annotations

from pandaserver.taskbuffer.taskbuffer import RunContext, TaskBuffer

__all__ = ["RunContext", "TaskBuffer"]

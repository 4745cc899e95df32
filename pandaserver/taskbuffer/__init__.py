"""The ``tbuf`` handed to scripts: database access plus PanDA's process-lock calls.

``TaskBuffer`` is imported on first access, so importing ``RunContext`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pandaserver.taskbuffer.context import RunContext

if TYPE_CHECKING:
    from pandaserver.taskbuffer.taskbuffer import TaskBuffer

__all__ = ["RunContext", "TaskBuffer"]


def __getattr__(name: str) -> Any:
    if name == "TaskBuffer":
        from pandaserver.taskbuffer.taskbuffer import TaskBuffer

        return TaskBuffer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Build the ``tbuf`` a worker hands to scripts.

With a config file it is the database-backed ``TaskBuffer`` (its engine is created in the
worker on first use, never inherited); without one, ``LocalServices`` carries only the
run context.
"""

from __future__ import annotations

import logging
from typing import Any

from pandaserver.taskbuffer.taskbuffer import RunContext

log = logging.getLogger("panda.worker")


class LocalServices:
    """A ``tbuf`` with the run context and no database."""

    def __init__(self) -> None:
        self.context = RunContext()


def make_tbuf(config_path: str | None) -> Any:
    if not config_path:
        return LocalServices()
    from pandaserver.config import ConfigError, load_config
    from pandaserver.taskbuffer.taskbuffer import TaskBuffer

    try:
        return TaskBuffer.from_config(load_config(config_path))
    except ConfigError as exc:
        log.error("scripts get no database: cannot read %s: %s", config_path, exc)
        return LocalServices()


def set_context(tbuf: Any, script: str | None, run_id: int | None,
                generation: int | None) -> None:
    tbuf.context = RunContext(script=script, run_id=run_id, generation=generation)

"""Build the ``tbuf`` a worker hands to scripts.

With a config file it is the database-backed ``TaskBuffer``, created on first use in the
worker (so an engine is never inherited, and a worker whose scripts never touch the
database never imports SQLAlchemy); without one, ``LocalServices`` carries only the run
context.
"""

from __future__ import annotations

import logging
from typing import Any

from pandaserver.taskbuffer.context import RunContext

log = logging.getLogger("panda.worker")


class LocalServices:
    """A ``tbuf`` with the run context and no database."""

    def __init__(self) -> None:
        self.context: Any = RunContext()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"tbuf.{name} is not available: this worker has no database (its master was"
            " started without a configuration file); only tbuf.context is")


class LazyTaskBuffer:
    """Stands in for ``TaskBuffer``: builds it at the first use of anything but ``context``."""

    def __init__(self, config_path: str, database: str | None = None) -> None:
        self._config_path = config_path
        self._database = database
        self._real: Any = None
        self.context: Any = RunContext()

    def _load(self) -> Any:
        if self._real is None:
            from pandaserver.config import load_config
            from pandaserver.taskbuffer.taskbuffer import TaskBuffer

            self._real = TaskBuffer.from_config(load_config(self._config_path),
                                                context=self.context, url=self._database)
        return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._load(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Settings a script makes (``tbuf.statement_timeout = 60``) reach the real one."""
        if name.startswith("_") or name == "context":
            object.__setattr__(self, name, value)
        else:
            setattr(self._load(), name, value)


def make_tbuf(config_path: str | None, database: str | None = None) -> Any:
    """``database``: the URL to use instead of the config's (the master's own)."""
    return LazyTaskBuffer(config_path, database) if config_path else LocalServices()


def set_context(tbuf: Any, script: str | None, run_id: int | None,
                generation: int | None) -> None:
    """The run ``tbuf`` now serves; ``script`` None when a run has ended: then the database
    connections the run left checked out (maybe in a transaction holding locks) are closed,
    so the next run starts on clean ones, and what the run set (the statement timeout) is
    put back."""
    real = getattr(tbuf, "_real", None)
    if script is None and real is not None:
        try:
            real.end_run()
        except Exception as exc:  # never the worker's end: the next run gets fresh ones
            log.warning("closing the connections a run left open failed: %s", exc)
    context = RunContext(script=script, run_id=run_id, generation=generation)
    tbuf.context = context
    if real is not None:
        real.context = context

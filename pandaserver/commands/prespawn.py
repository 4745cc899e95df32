"""The first worker of ``run``, started before the preflight, so that its interpreter boots
on the other core while the master checks the configuration and imports its modules: the
first run starts sooner.

A worker started early runs nothing and imports no script before the master sends it its
``init`` (after the preflight and the schema check): a refused start ends it unused
(``Prespawned.discard``; had the master died, the worker's lifeline would end it too). It
is started as the pool would start worker 1, with the master's marker in its environment
(``MASTER_VAR``, as ``Containment.start`` sets it), and handed to the pool by the process
layer (``Prespawned.spawn``) when the pool spawns worker 1 with the same command line; any
other spawn is an ordinary one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable

import psutil

from pandaserver.daemons.containment import processes, proctable
from pandaserver.daemons.containment.processes import PendingKill, Spawned
from pandaserver.daemons.containment.tracker import MASTER_VAR

log = logging.getLogger("panda.cli")

DISCARD_WAIT = 5.0  # seconds an unused early worker has to exit once killed


def worker_argv(server: str, log_level: str, config_path: str | None, index: int
                ) -> list[str]:
    """Worker ``index``'s options as the master gives them (``loop.worker_argv``, for a
    master without a worker log file: ``run``; a unit test keeps the two the same)."""
    argv = ["--server-name", server, "--log-level", log_level]
    if config_path:
        argv += ["--config", config_path]
    return [*argv, "--index", str(index)]


class Prespawned:
    """A process layer (``pandaserver.daemons.master.pool.ProcessLayer``) that hands out
    the workers started early, each once, to the spawn with their command line."""

    def __init__(self) -> None:
        self._early: dict[tuple[str, ...], Spawned] = {}

    def start(self, argv: list[str]) -> None:
        """Start a worker for the spawn of ``argv`` to come (none if it cannot start now:
        the pool then starts it as usual)."""
        identity = proctable.identity_of(os.getpid()) or str(os.getpid())
        try:
            self._early[tuple(argv)] = processes.spawn_worker(
                argv, env={**os.environ, MASTER_VAR: identity})
        except OSError as exc:
            log.debug("no early worker (%s): the master starts it", exc)

    def spawn(self, argv: list[str]) -> Spawned:
        early = self._early.pop(tuple(argv), None)
        return early if early is not None else processes.spawn_worker(argv)

    def begin_kill(self, pid: int, now: float, grace: float, reason: str,
                   extra: Iterable[int]) -> PendingKill:
        return processes.begin_kill(pid, now, grace, reason, extra)

    def finish_kill(self, pending: PendingKill) -> None:
        processes.finish_kill(pending)

    def any_alive(self, procs: list[psutil.Process]) -> bool:
        return processes.any_alive(procs)

    def discard(self) -> None:
        """End the early workers no spawn took (the master refused to start, or stopped)."""
        for spawned in self._early.values():
            with contextlib.suppress(OSError):
                spawned.popen.kill()
            with contextlib.suppress(Exception):
                spawned.popen.wait(DISCARD_WAIT)
            spawned.close()
        self._early.clear()

"""The ``lock_pool`` handed to scripts: named locks shared by the threads of one worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LockPool:
    """A pool of named re-entrant locks, created on first use.

    ``get(name)`` returns the lock itself; ``acquire``/``release`` and ``lock(name)``
    (a context manager) are shortcuts.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}

    def get(self, name: str) -> threading.RLock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = threading.RLock()
            return lock

    __getitem__ = get

    def acquire(self, name: str, blocking: bool = True, timeout: float = -1) -> bool:
        return self.get(name).acquire(blocking, timeout)

    def release(self, name: str) -> None:
        self.get(name).release()

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with self.get(name):
            yield

    def names(self) -> list[str]:
        with self._guard:
            return sorted(self._locks)

"""Crash-loop back-off: pure decisions on plain numbers (``now`` is passed in).

A run that ends with its worker's death (a segfault, ``os._exit``, an import that kills
the interpreter) or with an import failure is a *crash*. After one, the script's next
attempt waits ``backoff_delay(n)``: ``BASE * 2**(n-1)`` seconds after the n-th consecutive
crash, capped at ``[daemon] crash_backoff_max`` (default 300 s), times a jitter in
[0.5, 1] so that servers crashing on the same script do not retry in step. After
``FLAG_AFTER`` consecutive crashes the script is *crash-looping* (status, fleet, pages,
metrics; ``fleet --check`` fails) until a clean run (``ok`` or ``failed``: the script ran
and returned or raised) or an operator's ``resume``.

Whatever the configuration (a tiny ``proc_lifetime``, a script that kills every worker),
the master starts at most ``spawn_limit(n_proc)`` workers in any ``SPAWN_WINDOW`` seconds
(``SpawnLimiter``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

BASE = 1.0  # seconds after the first crash
FLAG_AFTER = 3  # consecutive crashes that make a script crash-looping
SPAWN_WINDOW = 60.0


def backoff_delay(failures: int, cap: float, jitter: float) -> float:
    """The wait after ``failures`` consecutive crashes; ``jitter`` in [0, 1)."""
    raw = min(cap, BASE * 2.0 ** min(max(failures, 1) - 1, 60))
    return raw * (0.5 + 0.5 * jitter)


def spawn_limit(n_proc: int) -> int:
    """Workers a master may start in any ``SPAWN_WINDOW``: a full set twice, and ten more."""
    return 2 * n_proc + 10


@dataclass
class Crashes:
    failures: int
    until: float  # monotonic: not tried again before
    why: str

    @property
    def looping(self) -> bool:
        return self.failures >= FLAG_AFTER


class CrashLoops:
    def __init__(self, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.cap = cap
        self.rng = rng
        self.scripts: dict[str, Crashes] = {}

    def crashed(self, name: str, now: float, why: str) -> Crashes:
        record = self.scripts.get(name)
        failures = 1 if record is None else record.failures + 1
        record = Crashes(failures, now + backoff_delay(failures, self.cap, self.rng()), why)
        self.scripts[name] = record
        return record

    def clean(self, name: str) -> Crashes | None:
        """A run that did not crash: forget the script's crashes (returns what was known)."""
        return self.scripts.pop(name, None)

    def blocked(self, name: str, now: float) -> bool:
        record = self.scripts.get(name)
        return record is not None and now < record.until

    def looping(self) -> dict[str, str]:
        return {name: r.why for name, r in self.scripts.items() if r.looping}

    def next_event(self, now: float) -> float | None:
        future = [r.until for r in self.scripts.values() if r.until > now]
        return min(future) if future else None


class SpawnLimiter:
    """At most ``limit`` spawns in any ``window`` seconds."""

    def __init__(self, window: float = SPAWN_WINDOW) -> None:
        self.window = window
        self.times: deque[float] = deque()

    def _forget(self, now: float) -> None:
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()

    def allowed(self, now: float, limit: int) -> bool:
        self._forget(now)
        return len(self.times) < limit

    def next_allowed(self, now: float, limit: int) -> float:
        self._forget(now)
        if len(self.times) < limit:
            return now
        return self.times[len(self.times) - limit] + self.window

    def note(self, now: float) -> None:
        self.times.append(now)

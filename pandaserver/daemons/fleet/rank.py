"""Who asks for a sync script's lease first: a preferred server per script. Pure.

Every live server of the fleet ranks itself for every script by rendezvous
(highest-random-weight) hashing of (script, server): each server computes the same order
from the same list of live servers, with no coordination, and a server joining or leaving
moves only the scripts it gains or loses (about 1/K of them). Rank 0 asks for the lease
at the due time; a server of rank r > 0 asks only if the lease still looks ungranted at
``due + fallback_offset(r, period)``. So, in a steady fleet, one server asks per period:
about one grant statement per grant instead of K.

The ranking decides who *asks*, never who may run: the grant stays the database's atomic
statement (db/stores/leases.py), so two runs at once stay impossible whatever the servers think
of each other's liveness. A wrong ranking (servers that disagree on who is live, a
preferred server that is dead, partitioned, paused, or not configured with the script)
costs a fallback delay or an extra statement, never a double run; the fallback makes sure
it never costs a missed period (see ``fallback_offset``; periods under ~1.2 s excepted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

FALLBACK_STEP = 1.0  # seconds between the checks of ranks 1, 2, ... (less for short periods)
FALLBACK_RANKS = 3  # ranks beyond this check with rank 3 (a late, rare race between them)
READ_INTERVAL = 2.0  # seconds between two reads of the lease table (less for short periods)
READ_INTERVAL_MIN = 0.25  # ... but never less (at most 4 reads a second per server)


def weight(script: str, server: str) -> int:
    """The rendezvous weight of ``server`` for ``script`` (stable across processes)."""
    digest = hashlib.blake2b(f"{script}\0{server}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def order(script: str, servers: Iterable[str]) -> list[str]:
    """Servers by preference for ``script``: highest weight first (ties by name)."""
    return sorted(set(servers), key=lambda s: (-weight(script, s), s))


def rank(script: str, me: str, servers: Iterable[str]) -> int:
    """This server's rank for ``script`` among ``servers`` (itself always counted)."""
    return order(script, {*servers, me}).index(me)


def step(period: float) -> float:
    """The fallback step of a script: a tenth of its period, at most ``FALLBACK_STEP``."""
    return min(FALLBACK_STEP, period / 10)


def read_interval(period: float) -> float:
    """How stale a lease-table read may be for a script of ``period``: a fifth of it,
    between ``READ_INTERVAL_MIN`` and ``READ_INTERVAL`` (so a dead preferred server may
    cost a script of a period under ~1.2 s one period)."""
    return max(READ_INTERVAL_MIN, min(READ_INTERVAL, period / 5))


def fallback_offset(rank_: int, period: float) -> float:
    """Seconds after the due time at which a server of rank ``rank_`` looks whether the
    script was granted (0 for the preferred server, which asks at once).

    The largest offset plus a read's staleness (``FALLBACK_RANKS`` steps of a tenth, plus
    a fifth) stays under half a period for periods of ~1.2 s and more (reads are at most 4
    a second), so a dead, paused or misconfigured preferred server delays a period, never
    misses it. A step is wide
    enough (up to 1 s) that a preferred server a little late (a busy worker, a loaded
    machine) is not raced by the next one.
    """
    return min(rank_, FALLBACK_RANKS) * step(period)

"""Who asks for a sync script's lease first: a preferred server per script. Pure.

Every live server of the fleet ranks itself for every script by rendezvous
(highest-random-weight) hashing of (script, server): each server computes the same order
from the same list of live servers, with no coordination, and a server joining or leaving
moves only the scripts it gains or loses (about 1/K of them). Rank 0 asks for the lease
at the due time; a server of rank r > 0 asks only if the lease still looks ungranted at
``due + fallback_offset(r, period)``. So, in a steady fleet, one server asks per period:
about one grant statement per grant instead of K.

The ranking decides who *asks*, never who may run: the grant stays the database's atomic
statement (db/stores/leasegrant.py), so two runs at once stay impossible whatever the servers think
of each other's liveness. A wrong ranking (servers that disagree on who is live, a
preferred server that is dead, partitioned, paused, or not configured with the script)
costs a fallback delay or an extra statement, never a double run; the fallback makes sure
it never costs a missed period (see ``fallback_offset``; periods under ~1.2 s excepted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

FALLBACK_STEP = 1.0  # seconds between the checks of ranks 1, 2, ... (less for short periods)
FALLBACK_RANKS = 3  # ranks beyond this check with rank 3 (a late, rare race between them)
READ_INTERVAL = 2.0  # seconds between two reads of the lease table (less for short periods)
READ_INTERVAL_MIN = 0.25  # ... but never less (at most 4 reads a second per server)
OVERRUN_LOOK = 1.0  # seconds: how soon to look again at a lease held past its due time


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


# ----- what a look sees (daemons/fleet/dbleases.py) -------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One lease as a bulk read saw it: ``due_in`` and ``expires_in`` in seconds, and its
    generation (what a grant heard later must be newer than: grantwatch.py)."""

    held: bool
    due_in: float
    expires_in: float | None
    generation: int = 0


@dataclass
class Read:
    """A lease-table read: when it was handed to its lane, when it came back (the loop's
    clock), and what it saw."""

    sent: float
    done: float
    leases: dict[str, Seen]


def wait_from(seen: Seen | None) -> float | None:
    """Seconds until the script is worth asking for again, as a read saw it; None when it
    is not granted for this period (no row, due and not held): ask now."""
    if seen is None:
        return None
    if seen.due_in > 0:  # granted for this period (running or done): next due then
        return seen.due_in
    if seen.held:  # an overrun: its holder asks again when done; look again soon
        return max(0.05, min(seen.expires_in or 0.0, OVERRUN_LOOK))
    return None


def draining(state: str | None) -> bool:
    """A server's reported state says it is draining (it asks for no sync lease)."""
    try:
        return bool(state) and bool(json.loads(state or "{}").get("draining"))
    except (ValueError, AttributeError):
        return False


def release_by(due: float, period: float, rank_: int, member: bool) -> float | None:
    """The latest moment to release a finished lease that this master would ask for again
    (rank 0) at ``due``: half-way to the moment the next server looks (rank 1's fallback
    offset). None: release at once (not the preferred server, or not a fleet member)."""
    if rank_ != 0 or not member:
        return None
    return due + fallback_offset(1, period) / 2

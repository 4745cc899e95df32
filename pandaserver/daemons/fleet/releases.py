"""A master's lease releases: deferred, and folded into its next grant.

``Releases`` is owned by ``DbLeases`` (dbleases.py): it keeps the leases this master holds
(``Granted``: as its own clock bounds them) and the finished ones whose release waits.
Nobody else needs a finished lease before its next due time, and the server that asks first
then is its preferred one; so the preferred server's release rides on its own next grant
statement (``finished`` in ``LeaseStore.try_acquire``), or on one statement for every such
lease before the next server would look (``send_releases``); a lease that expires by then
needs none. Elsewhere a lease is released at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pandaserver.daemons.fleet.rank import release_by

if TYPE_CHECKING:
    from pandaserver.daemons.fleet.fleetdb import FleetDb

log = logging.getLogger("panda.master")


@dataclass
class Granted:
    """A lease this master was granted, as its own clock bounds it."""

    generation: int
    period: float
    due: float | None  # the next fleet-wide due time, early by the grant's latency at most
    expires: float  # by this moment (monotonic) the lease has expired, unless renewed


class Releases:
    """The held leases' clocks and the deferred releases of one ``DbLeases``."""

    def __init__(self, fleet: FleetDb, rank: Callable[[str], int]) -> None:
        self.fleet = fleet
        self._rank = rank  # the script's rank in the fleet (DbLeases.rank)
        self._granted: dict[str, Granted] = {}  # the leases this master holds, by name
        self.finished: dict[str, tuple[int, float]] = {}  # name -> (generation, release by)
        # finished leases that expire before any release would be due: never released by
        # a statement of their own, unless an operator's run-now needs them free sooner
        self.expiring: dict[str, tuple[int, float]] = {}  # name -> (generation, expires)
        self.folded = 0  # releases made by a grant statement (status, tests, benchmarks)

    def granted(self, name: str, lease: Granted) -> None:
        """``name``'s lease was granted to this master."""
        self._granted[name] = lease

    def renewed(self, held: list[tuple[str, int]], renewed: Any, expires: float) -> None:
        """A renewal of ``held`` answered: the leases it renewed live until ``expires``
        at least (monotonic)."""
        for name, generation in held:
            granted = self._granted.get(name)
            if name in renewed and granted is not None \
                    and granted.generation == generation:
                granted.expires = max(granted.expires, expires)

    def take(self, name: str) -> int | None:
        """This master's own finished generation of ``name``, for its next grant statement
        to release (None: none)."""
        kept = self.finished.pop(name, None) or self.expiring.pop(name, None)
        return None if kept is None else kept[0]

    def answered(self, name: str, finished: int | None, granted: bool) -> None:
        """The grant that named ``finished`` was answered: released by it (granted), or
        released now."""
        if finished is not None and not granted:  # not released by it: release now
            self.fleet.release(name, finished)
        elif finished is not None:
            self.folded += 1

    def release(self, name: str, generation: int | None) -> None:
        """A run under ``name``'s lease ended: release it, now or by folding.

        Nobody else needs a finished lease before its next due time, and the server that
        asks first then is its preferred one. So when this master is that server (rank 0),
        the release waits for its own next grant statement for the script, which counts
        its finished generation as free (one statement for both: ``finished`` in
        ``LeaseStore.try_acquire``). Should that grant not come by the time the next
        server would look (``release_by``: half of rank 1's fallback offset after the due
        time), one statement releases every such lease then (``send_releases``); a lease
        that has expired by then on its own needs no release at all. Otherwise (not the
        preferred server, an overrun past the due time, no fleet, the database down)
        it is released at once, as before.
        """
        if generation is None:
            return
        fleet = self.fleet
        now = fleet.monotonic()
        granted = self._granted.pop(name, None)
        # released at once: how the run ended is written by the release itself, so it is in
        # the database before any later grant of this master (db/stores/grantrun.py)
        if granted is None or granted.generation != generation or granted.due is None:
            fleet.release(name, generation, fleet.keeper.ended_under(name, generation))
            return
        by = release_by(granted.due, granted.period, self._rank(name), fleet.member)
        if by is None or by <= now or fleet.down_since is not None:
            fleet.release(name, generation, fleet.keeper.ended_under(name, generation))
        elif granted.expires > by:  # else it expires on its own before anyone asks
            self.finished[name] = (generation, by)
        else:
            self.expiring[name] = (generation, granted.expires)

    def next_release(self) -> float | None:
        """When ``send_releases`` has a deferred release to send (monotonic)."""
        return min((by for _, by in self.finished.values()), default=None)

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        """Release in one statement the deferred leases due by ``now`` (all: at the stop;
        ``only``: that script's now, whenever it was due: an operator's run-now, which
        another server may take before the release was due)."""
        if only is not None:
            self.expiring = {n: e for n, e in self.expiring.items() if e[1] > now}
            found = self.finished.get(only) or self.expiring.pop(only, None)
            due = [] if found is None else [(only, found[0])]
        else:
            due = sorted((name, gen) for name, (gen, by) in self.finished.items()
                         if everything or by <= now)
            if everything:  # a stopping master leaves no lease of its own held
                due += sorted((name, gen) for name, (gen, expires) in self.expiring.items()
                              if expires > now)
                self.expiring = {}
        if not due:
            return
        fleet = self.fleet
        for name, _ in due:
            self.finished.pop(name, None)
        if fleet.down_since is not None and not fleet.usable(now):
            fleet.failed_releases.extend(due)
            return

        def done(result: Any, error: BaseException | None, late: bool) -> None:
            if late:
                return
            if error is not None:
                fleet.failed_releases.extend(due)
            elif result < len(due):
                log.warning("%d of %d finished lease(s) were no longer ours at release"
                            " (expired and taken, or force-released)", len(due) - result,
                            len(due))

        fleet._submit("lease", "release", lambda: fleet.leases.release_many(due, fleet.holder),
                      done)

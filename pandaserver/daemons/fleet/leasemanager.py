"""The seam between the master and fleet-wide leases for ``sync`` scripts.

Every call is asynchronous: the master asks, and the answer comes back later as a call of
``reply`` on the master's loop thread (never from another thread). ``LocalLeases`` answers
at once and grants everything: a single server needs no fleet agreement, and its leases
never expire (``ttl`` None), so nothing is renewed or fenced. ``turn`` says whether this
server should ask at all (in a fleet, one preferred server per script asks: daemons/fleet/rank.py).
A release may be deferred and folded into the next grant statement (daemons/fleet/releases.py):
``next_release`` says when the deferred ones must go out at the latest, ``send_releases``
sends them (the ``LeaseKeeper`` calls both with its renewals).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pandaserver.config.scripts import DaemonSpec


@dataclass(frozen=True)
class LeaseDecision:
    granted: bool
    generation: int | None = None
    wait: float = 0.0  # seconds until it is worth asking again, when not granted
    holder: str | None = None
    unavailable: bool = False  # the lease store could not be reached
    sent: float = 0.0  # the master's monotonic clock when the statement was handed over
    # granted: seconds (database clock) from the grant to the next fleet-wide due time
    due_in: float | None = None
    # a cron script's lease: the database's clock at the statement and the latest firing
    # the fleet has served (POSIX seconds; None: unknown, or not a cron lease)
    db_now: float | None = None
    served: float | None = None
    # granted, and the grant wrote the ``running`` history row of the run it was asked
    # for (db/stores/grantrun.py): a grant left unused must end that row
    run_row: bool = False


@dataclass(frozen=True)
class Turn:
    """Whether this server should ask for a due sync script's lease now (``ask``, for the
    due time ``due``), or not: look again at ``at`` (monotonic), the script's next due
    time when ``learned`` (the fleet granted this period meanwhile, see daemons/fleet/rank.py)."""

    ask: bool
    due: float = 0.0
    at: float = 0.0
    learned: bool = False


AcquireReply = Callable[[LeaseDecision], None]
# renewed names (None: the database could not be reached), and when the renewal was sent
RenewReply = Callable[[set[str] | None, float], None]


class LeaseManager(Protocol):
    @property
    def ttl(self) -> float | None:
        """How long a granted or renewed lease lives (None: for ever)."""

    @property
    def epoch(self) -> int:
        """How many times the lease store was seen to become another server (a failover of
        the database, daemons/fleet/failover.py): a lease held since an older epoch is lost."""

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        """Whether to ask for ``spec``'s lease, due at ``due``, now (never blocks)."""

    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        """Ask for ``spec``'s lease (a cron script: for its ``firing``, POSIX seconds),
        for the run numbered ``run_id`` (its history row may be written by the grant)."""

    def renew(self, held: list[tuple[str, int]], now: float, reply: RenewReply) -> None: ...

    def release(self, name: str, generation: int | None) -> None:
        """A run under the lease ended: release it (at once, or deferred: see below)."""

    def not_run(self, name: str, generation: int, run_id: int) -> None:
        """A grant that wrote the ``running`` row of run ``run_id`` (``run_row``) was not
        used: that run never started, so its row goes (the lease is released apart)."""

    def next_release(self) -> float | None:
        """When a deferred release must be sent (monotonic); None: none waits."""

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        """Send the deferred releases due by ``now`` (``everything``: all of them)."""


class _NoDatabase:
    """What a lease manager with no database to talk to does with held leases: every
    renewal holds, and nothing is released or removed anywhere."""

    ttl: float | None = None
    epoch = 0

    def renew(self, held: list[tuple[str, int]], now: float, reply: RenewReply) -> None:
        reply({name for name, _ in held}, now)

    def release(self, name: str, generation: int | None) -> None:
        return None

    def not_run(self, name: str, generation: int, run_id: int) -> None:
        return None

    def next_release(self) -> float | None:
        return None

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        return None


class LocalLeases(_NoDatabase):
    """Every script may run: the right answer for one server with no shared database."""

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        return Turn(ask=True, due=due)

    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        reply(LeaseDecision(granted=True, sent=now))


class PendingLeases(_NoDatabase):
    """The leases of a master whose database side is not open yet (it opens just after the
    first run of a script that needs no lease, daemons/fleet/late.py): no sync script asks
    before then; each looks again ``RETRY`` seconds later."""

    RETRY = 0.05

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        return Turn(ask=False, due=due, at=now + self.RETRY)

    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        reply(LeaseDecision(granted=False, wait=self.RETRY, sent=now))

"""How long a sync run may live under its lease: pure arithmetic on the master's clock.

A lease granted or renewed by a statement *sent* at ``sent`` (the master's monotonic clock)
expires, by the database's clock, no earlier than ``sent + ttl``: the statement cannot have
run before it was sent. So the holder counts from ``sent``, never from the reply, and never
trusts the database's time or another server's. A run must be dead before that moment:

    sent ──── renew (ttl/3) ──── ... ──── fence: SIGTERM ── KILL_GRACE ── SIGKILL ── SAFETY ── expiry
                                           = hard - KILL_GRACE            = hard

``hard = sent + ttl - SAFETY``. The master starts the kill at ``fence_at``; the worker
itself holds the same ``hard`` deadline (sent to it through its lifeline pipe), so a master
that is stopped, frozen or starved cannot let a run outlive its lease. Renewals go out every
``ttl/3``; one confirmed renewal moves every deadline on.

``minimum_ttl`` is the smallest lease that leaves room for one renewal that takes up to
``call_timeout`` plus the kill escalation: config refuses anything shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

SAFETY = 2.0  # seconds between the last SIGKILL and the lease's earliest expiry
RENEW_FRACTION = 1 / 3
RENEW_RETRY = 1.0  # after a failed renewal, try again this soon (until fenced)


def hard_deadline(sent: float, ttl: float) -> float:
    """By this moment every process of the run must have been sent SIGKILL."""
    return sent + ttl - SAFETY


def fence_at(sent: float, ttl: float, kill_grace: float) -> float:
    """When the master starts the polite kill of a run whose lease was not renewed."""
    return hard_deadline(sent, ttl) - kill_grace


def renew_at(sent: float, ttl: float) -> float:
    return sent + ttl * RENEW_FRACTION


def minimum_ttl(kill_grace: float, call_timeout: float) -> float:
    """A renewal sent at ttl/3 that takes ``call_timeout`` must still land before the fence."""
    # ttl * (1 - RENEW_FRACTION) - SAFETY - kill_grace >= call_timeout
    return (call_timeout + SAFETY + kill_grace) / (1 - RENEW_FRACTION)


@dataclass
class LeaseClock:
    """One held lease as its holder counts it."""

    name: str
    generation: int
    sent: float  # when the last *confirmed* grant or renewal was sent
    ttl: float
    fenced: bool = False  # the run is being killed: its lease is no longer renewed
    epoch: int = 0  # the lease store's epoch at the grant (a failover since: lost)

    def confirm(self, sent: float) -> None:
        self.sent = max(self.sent, sent)

    @property
    def hard(self) -> float:
        return hard_deadline(self.sent, self.ttl)

    def fence(self, kill_grace: float) -> float:
        return fence_at(self.sent, self.ttl, kill_grace)

    @property
    def renew(self) -> float:
        return renew_at(self.sent, self.ttl)

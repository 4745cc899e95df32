"""After a failover of the database: no grant and no renewal until the old leases are dead.

With asynchronous replication a promoted standby may lack the old primary's last commits:
a lease shown expired (or a generation older) there may still be held by a server whose
renewal reached only the old primary. Another server granted it on the new primary would
run beside that holder. So when ``IdentityWatch`` (``db/base/serverid.py``) reports that the
database is another server than before (not a plain restart of the same one), this master:

- fences every sync run it holds at once (its lease may not exist on the new server), as
  a lost lease is fenced (``keeper.py``: a lease held under an older ``epoch`` is lost);
- sends no grant and no renewal until ``lease_ttl + SAFETY`` seconds after it noticed:
  any lease granted or renewed on the old server was sent before that server died, so
  before the notice, and its holder kills the run by ``sent + lease_ttl - SAFETY`` on its
  own clock (``fencing.py``), whatever the database says and whether or not the holder
  noticed anything; SAFETY more covers the clocks' rates and the notice's own lag;
- refuses lease statements a lane was about to run on the new server before the loop acted
  (``check``, called on the lane thread after the connection is made), and answers that
  came back under the old epoch are not trusted (``dbleases.py``);
- re-sends the history written recently, which the new server may lack
  (``history/keeper.py``: writes are keyed, so what was replicated is not doubled).

The wait holds whatever the replication mode: with synchronous replication a commit
returns only once the standby has it, so the new primary lacks nothing the holder was told,
but a standby promoted while cut from its primary (or a ``synchronous_standby_names`` that
allowed the old primary to go on alone, as ``ANY 1`` of several or a fallback to
asynchronous does) may still, and the master cannot tell which happened; one lease_ttl
without sync runs is the price (docs/multi-server.md, "Failover of the database").
Used on the loop thread only, but ``check`` on lane threads (reads two integers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from pandaserver.daemons.fleet.fencing import SAFETY
from pandaserver.db.base.serverid import HistoryAge, IdentityWatch, ServerChanged

log = logging.getLogger("panda.master")


class FailoverGate:
    def __init__(self, watch: IdentityWatch | None, ttl: Callable[[], float],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.watch = watch
        self.ttl = ttl
        self.monotonic = monotonic  # for ``check`` on the lane threads
        self.aged: HistoryAge | None = None  # the history age the loop has logged
        self.epoch = watch.epoch if watch is not None else 0  # the history the loop acts on
        self.until: float | None = None  # no lease statement before then (monotonic)
        self.noticed_at: float | None = None
        self.failovers = 0

    def notice(self, now: float) -> bool:
        """True (once per change) when the database became another server since the last
        call: the gate closes until ``now + lease_ttl + SAFETY``. (A history that began
        recently, read by the watch, closes it by itself: ``closed``; logged here once,
        unless this master's own notice already holds the gate at least as long.)"""
        if self.watch is None:
            return False
        changed = self.watch.epoch != self.epoch
        if changed:
            self.epoch = self.watch.epoch
            self.failovers += 1
            self.noticed_at = now
            wait = self.ttl() + SAFETY
            self.until = now + wait
            log.error("database failover noticed (%s): running sync scripts are fenced now, and"
                      " no sync lease is asked for or renewed for %.0f s (lease_ttl + %.0f s),"
                      " until every lease granted on the old server has fenced itself",
                      self.watch.current, wait, SAFETY)
        age = self.watch.age
        if age is not None and age is not self.aged:
            self.aged = age
            end = self._history_end(age)
            if now < end and (self.until is None or end > self.until):
                log.warning("database: this server's history (%s) began at most %.1f s ago"
                            " (a promoted standby); no sync lease is asked for or renewed for"
                            " %.1f s more, until every lease granted on its old primary has"
                            " fenced itself (lease_ttl + %.0f s after the promotion)",
                            age.identity, age.elapsed, end - now, SAFETY)
        return changed

    def _history_end(self, age: HistoryAge) -> float:
        """When the leases of the server before this history have all fenced (monotonic)."""
        return age.measured + self.ttl() + SAFETY - age.elapsed

    def end(self) -> float:
        """No lease statement before then (monotonic; ``-inf``: none held back)."""
        end = self.until if self.until is not None else -math.inf
        age = self.watch.age if self.watch is not None else None
        if age is not None and not math.isinf(age.elapsed):
            end = max(end, self._history_end(age))
        return end

    def closed(self, now: float) -> bool:
        return now < self.end()

    def remaining(self, now: float) -> float:
        return max(0.0, self.end() - now)

    def check(self) -> None:
        """On a lane thread, after the connection is made: raise ``ServerChanged`` when it
        reached a server the loop has not acted on yet, or one whose history began less
        than ``lease_ttl + SAFETY`` ago (the first connection of a master after a failover)."""
        if self.watch is None:
            return
        self.watch.check(self.epoch)
        if self.closed(self.monotonic()):
            raise ServerChanged(f"the database ({self.watch.current}) became the primary"
                                " recently; lease statements wait until the old leases"
                                " have fenced")

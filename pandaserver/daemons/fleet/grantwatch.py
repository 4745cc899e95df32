"""Which grants this master has heard of: the fallback servers' look without a read (PostgreSQL).

On PostgreSQL every lease grant statement also sends ``pg_notify('panda_daemon_grant', ...)``
in itself (``grant_announce`` in db/stores/leasefirings.py): name, generation, holder and
``due_in``, the seconds from the grant to the script's next due time on the database's
clock. A notification is delivered only if the grant committed, and a connection that
listens gets every one committed after its ``LISTEN``, in commit order. The master's
``LISTEN`` connection (listener.py) hands them here.

A server of rank r > 0 looks at ``due + fallback_offset(r)`` whether the period was served
(dbleases.py). It knows the lease as of some grant: ``Known``, the generation that a
lease-table read showed, that its own grant got, or that it heard last, and since when.
``served`` answers with the grant heard after that one, if:

- the listener has been listening, on its current connection, since before that knowledge
  (``since <= known.at``): then every grant committed after it was delivered, so a newer
  generation heard is the next grant, never one the read or grant already showed that
  arrived late (the generation is compared, not the arrival time);
- a generation newer than the known one was heard (a grant made after the one that set the
  due time being looked at: that period was served, or a later one);
- that grant's next due time is still ahead (``at + due_in > now``: its period is the
  current one, as a read's ``due_in > 0`` says).

Otherwise (not listening, listening again since, nothing newer heard, a previous release's
master that sends no notification, another backend) it answers None, and the server reads
the lease table exactly as without notifications: so a dead preferred server is noticed
as before. Pure state, fed and asked on the loop thread.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("panda.master")


@dataclass(frozen=True)
class Heard:
    """A grant heard: its generation, ``due_in`` (database clock), when it was taken from
    the socket (monotonic: late by the delivery, so ``at + due_in`` is never early)."""

    generation: int
    due_in: float
    at: float


@dataclass(frozen=True)
class Known:
    """What this master last knew of a lease: its generation, since ``at`` (monotonic: a
    read's or a grant's send time, or when a notification was taken), in failover ``epoch``."""

    generation: int
    at: float
    epoch: int


class Listening(Protocol):
    """What the look needs of the ``LISTEN`` connection (listener.py's ``CommandListener``)."""

    grants: GrantWatch | None

    def watch_grants(self, watch: GrantWatch, now: float) -> None: ...

    def read(self, now: float) -> None: ...


class GrantWatch:
    def __init__(self) -> None:
        self.since: float | None = None  # listening on the current connection since then
        self.heard: dict[str, Heard] = {}  # the latest grant heard per script, this connection
        self.known: dict[str, Known] = {}  # what this master knew of each lease before
        self.notices = 0  # notifications taken (status, benchmarks)
        self.settled = 0  # looks settled by a grant heard, without a read

    def know(self, name: str, known: Known | None) -> None:
        """What this master learned of ``name``'s lease (None: it does not know; it asked)."""
        if known is None:
            self.known.pop(name, None)
        else:
            self.known[name] = known

    def look(self, listener: Listening | None, name: str, epoch: int,
             now: float) -> Heard | None:
        """A fallback server's look at ``name``: the grant heard since what it knew (which
        it then knows), or None: read the lease table. The first look starts the watch
        (the connection listens again, on both channels): a master that never looks (alone
        in its fleet, or without sync scripts) is never woken by grants."""
        if listener is None:  # not PostgreSQL, or not a fleet member
            return None
        if listener.grants is None:
            listener.watch_grants(self, now)
            return None
        listener.read(now)  # take what has arrived (never blocks)
        heard = self.served(name, self.known.get(name), epoch, now)
        if heard is not None:
            self.known[name] = Known(heard.generation, heard.at, epoch)
            self.settled += 1
        return heard

    # ----- fed by the listener ----------------------------------------------------------------
    def listening(self, now: float) -> None:
        """A new connection listens (its ``LISTEN`` committed by ``now``)."""
        self.since = now
        self.heard.clear()

    def deaf(self) -> None:
        """The connection ended: grants committed from now on may go unheard."""
        self.since = None
        self.heard.clear()

    def take(self, payload: str, now: float) -> None:
        """One notification's payload (JSON: name, generation, due_in)."""
        self.notices += 1
        try:
            data = json.loads(payload)
            name, generation = str(data["name"]), int(data["generation"])
            due_in = float(data["due_in"])
        except (ValueError, TypeError, KeyError) as exc:  # not ours: nothing is concluded
            log.debug("a grant notification not understood (%s): %.200s", exc, payload)
            return
        before = self.heard.get(name)
        if before is None or generation > before.generation:
            self.heard[name] = Heard(generation, due_in, now)

    # ----- asked by the fallback look ---------------------------------------------------------
    def served(self, name: str, known: Known | None, epoch: int, now: float) -> Heard | None:
        """The grant heard after ``known`` whose period is the current one; None when
        nothing can be concluded (the caller reads the lease table). Pure."""
        if known is None or self.since is None or known.at < self.since or known.epoch != epoch:
            return None
        heard = self.heard.get(name)
        if heard is None or heard.generation <= known.generation:
            return None
        if heard.at + heard.due_in <= now:  # its next period has come too: not this one
            return None
        return heard

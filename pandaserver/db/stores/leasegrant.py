"""A sync lease's grant: the period's statement, and the answer of every grant.

``try_acquire`` (``LeaseStore``, leases.py) runs one atomic statement::

    INSERT INTO daemon_lease (...)
      VALUES (name, 1, me, pid, now, now + ttl, now + period, ...)
    ON CONFLICT (name) DO UPDATE SET generation = generation + 1, owner = me, ...,
        next_due = CASE WHEN next_due <= now
                        THEN max(next_due + period, now + period - tolerance)
                        ELSE now + period END
      WHERE (next_due <= now OR acquired_at + :period <= now)
        AND (expires_at IS NULL OR expires_at <= now)
    RETURNING generation, next_due, expires_at, ...

so of any number of servers racing for a due lease exactly one gets it. A grant on time (at
most ``tolerance`` = ``min(1 s, period / 10)`` after ``next_due``, ``db/base/servertime.py``:
``due_tolerance``) keeps the grid (``next_due + period``: no drift); a later one (a fallback
server, an overrun, the first grant after the whole fleet was down) counts the period from
itself, less the tolerance; so two grants are never closer than ``period - tolerance``,
missed periods are never run in a burst, and the grant returns ``due_in`` for the master to
keep its own due time in step. The grant condition also honours the *requesting* server's
period (``acquired_at + period <= now``), so a period shortened by a reload takes effect at
the next grant, not one old period later; such a grant (and the first) restarts the grid at
now + period.

A refused attempt adds one to the row's ``contended`` and records who (``contended_by``)
and when (``contended_at``): history needs no row per losing server per period. Its
answer (holder, next due time, wait) is read from the row as that update left it, the
newest committed version. On PostgreSQL grant and refusal are one statement (a CTE,
``pandaserver/db/base/upsert.py``); SQLite adds an ``UPDATE ... RETURNING`` on a refusal;
MySQL/MariaDB fold both into ``INSERT ... ON DUPLICATE KEY UPDATE`` plus a read-back.
See docs/database.md.

A sync script on a ``cron`` schedule asks for a *firing* instead, granted once per firing
on the database's clock alone: the statement and its rule are in
``pandaserver/db/stores/leasefirings.py``; its answer is a ``LeaseResult`` too. A grant
that names its run writes the run's row (``grantrun.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Float, Row, and_, bindparam, case, or_

from pandaserver.db.base.servertime import (
    db_now_expr,
    db_now_plus,
    due_tolerance,
    next_due_after,
    seconds_between,
)
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.base.upsert import upsert_or_else
from pandaserver.db.stores import grantrun
from pandaserver.db.stores.leasefirings import (
    FiringGrants,
    finished_by_holder,
    grant_announce,
    grant_owner,
    refusal_wait,
)


@dataclass(frozen=True)
class LeaseResult:
    """What ``try_acquire`` decided.

    ``wait``: seconds (by the database clock) until trying again is worthwhile, 0 when
    granted. ``holder``: the server holding a live lease (the caller itself when
    granted), None when nobody holds it. ``next_due``/``expires``: the row's values (when
    refused: the newest, as the refusal left it). ``due_in``: when granted, seconds by the
    database clock from the grant to the new ``next_due`` (the fleet-wide grid).
    """

    granted: bool
    generation: int | None
    wait: float
    holder: str | None
    next_due: datetime | None
    expires: datetime | None
    due_in: float | None = None
    # a cron lease: the latest firing served (as the answer left the row), the database's now
    firing: datetime | None = None
    db_now: datetime | None = None
    # refused: the lease is held past its due time (an overrun, or a finished run whose
    # holder has not released it yet: daemons/fleet/releases.py)
    held_past_due: bool = False
    # granted with the run's ``running`` row written by the grant itself (grantrun.py)
    run_row: bool = False


class Grants:
    """The grant statements of one ``LeaseStore`` (built once per dialect): each method
    returns the operation the store runs on a connection (its ``_run``)."""

    def __init__(self, dialect: str, run_rows: dict[str, Any]) -> None:
        self.dialect = dialect
        self._statements: dict[str, Any] = {}  # by dialect: built once (see upsert.py)
        self._firings = FiringGrants()  # a cron script's grants (statements, rows made)
        self._run_rows = run_rows  # SQLite/MySQL: a grant's run row (grantrun.py)

    def period(self, name: str, server: str, pid: int, period: float, ttl: float,
               token: str | None, finished: int | None, run_id: int | None,
               ended: grantrun.Ended | None, adopt: bool,
               ) -> Callable[[Connection], LeaseResult]:
        """``try_acquire`` for a script on a period: the grant, or the refusal counted."""
        t = daemon_lease
        now = db_now_expr()
        p_period = bindparam("lease_period", type_=Float())
        p_server = bindparam("lease_server", type_=t.c.owner_server.type)
        owner = grant_owner(p_server, p_period)
        # the grid, or from now when late; uses only next_due itself (MySQL assigns in
        # order: see upsert.py)
        tolerance = bindparam("lease_tolerance", type_=Float())
        next_due = case((t.c.next_due <= now, next_due_after(t.c.next_due, p_period, tolerance)),
                        else_=db_now_plus(p_period))
        period_passed = seconds_between(now, t.c.acquired_at) >= p_period
        # released by this very grant: this holder's own finished generation (NULL: none)
        own_finished = finished_by_holder(p_server)
        due = and_(or_(t.c.next_due <= now, period_passed),
                   or_(t.c.expires_at.is_(None), t.c.expires_at <= now, own_finished))
        refused = {"contended": t.c.contended + 1, "contended_by": p_server,
                   "contended_at": now}
        params = {"lease_name": name, "lease_server": server, "lease_pid": pid,
                  "lease_token": token, "lease_period": float(period), "lease_ttl": float(ttl),
                  "lease_tolerance": due_tolerance(float(period)),
                  "lease_finished": finished, "lease_adopt": adopt,
                  **grantrun.params(run_id, ended)}
        with_row = run_id is not None and token is not None

        def attempt(conn: Connection) -> LeaseResult:
            granted, row = upsert_or_else(
                conn,
                t,
                {"name": bindparam("lease_name", type_=t.c.name.type), "generation": 1,
                 **owner, "next_due": db_now_plus(p_period), "contended": 0,
                 "contended_by": None, "contended_at": None},
                key=["name"],
                set_={"generation": t.c.generation + 1, **owner, "next_due": next_due},
                where=due,
                otherwise=refused,
                returning=[t.c.generation, t.c.owner_server, t.c.next_due, t.c.expires_at,
                           t.c.acquired_at, t.c.contended_at],
                params=params,
                cache=self._statements,
                announce=grant_announce(),  # PostgreSQL: the fleet hears of the grant
                also=grantrun.ctes,
            )
            if row is None:  # pragma: no cover - rows are never deleted
                return LeaseResult(False, None, 0.0, None, None, None)
            if granted:  # acquired_at is the statement's 'now'
                self._run_row(conn, int(row.generation), params)
                return LeaseResult(True, int(row.generation), 0.0, server, row.next_due,
                                   row.expires_at, _seconds(row.next_due, row.acquired_at),
                                   run_row=with_row)
            return _losing(row, period)

        return attempt

    def in_transaction(self, token: str | None, run_id: int | None,
                       ended: grantrun.Ended | None) -> bool:
        """A grant that writes run rows needs a transaction where they are statements of
        their own (not on PostgreSQL: one statement)."""
        return token is not None and (run_id is not None or ended is not None) \
            and self.dialect != "postgresql"

    def _run_row(self, conn: Connection, generation: int, params: dict[str, Any]) -> None:
        """SQLite, MySQL: the granted run's row, in the grant's transaction (PostgreSQL
        wrote it in the grant statement)."""
        if conn.dialect.name != "postgresql":
            grantrun.insert_row(conn, generation, params, self._run_rows)

    def firing(self, name: str, server: str, pid: int, period: float, ttl: float,
               firing: datetime, next_firing: datetime,
               token: str | None, finished: int | None,
               run_id: int | None, ended: grantrun.Ended | None,
               adopt: bool = False,
               ) -> Callable[[Connection], LeaseResult]:
        """``try_acquire`` for a cron script's ``firing`` (``leasefirings.py``)."""
        with_row = run_id is not None and token is not None

        def attempt(conn: Connection) -> LeaseResult:
            granted, row, params = self._firings.attempt(
                conn, name, server, pid, period, ttl, firing, next_firing, token, finished,
                run_id, ended, adopt)
            if row is None:  # pragma: no cover - rows are never deleted
                return LeaseResult(False, None, 0.0, None, None, None)
            if granted:
                self._run_row(conn, int(row.generation), params)
                return LeaseResult(True, int(row.generation), 0.0, server, row.next_due,
                                   row.expires_at, _seconds(row.next_due, row.acquired_at),
                                   firing=row.firing, db_now=row.acquired_at,
                                   run_row=with_row)
            wait, live = refusal_wait(row, firing)
            return LeaseResult(False, None, wait, row.owner_server if live else None,
                               row.next_due, row.expires_at, firing=row.firing,
                               db_now=row.contended_at)

        return attempt


def _seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else (later - earlier).total_seconds()


def _losing(row: Row[Any], period: float) -> LeaseResult:
    """A refusal's answer, from the row as the refusal left it; ``contended_at`` is the
    refusing statement's database time.

    ``wait``: until the lease is due (``next_due``, or this server's ``period`` since the
    last grant if that comes first: a period shortened by a reload), and at least until a
    live lease expires. ``holder``: the server of a live lease.
    """
    now: datetime = row.contended_at
    due_in = _seconds(row.next_due, now)
    assert due_in is not None  # next_due is NOT NULL
    since = _seconds(row.acquired_at, now)
    if since is not None:  # this server's period may be the shorter one
        due_in = min(due_in, since + period)
    expires_in = _seconds(row.expires_at, now)
    live = expires_in is not None and expires_in > 0
    wait = max(0.0, due_in, expires_in or 0.0)
    return LeaseResult(False, None, wait, row.owner_server if live else None, row.next_due,
                       row.expires_at, held_past_due=live and due_in <= 0)

"""A cron script's lease grant: once per firing fleet-wide, judged on the database's clock.

A sync script on a ``cron`` schedule asks for a *firing* (``LeaseStore.try_acquire(...,
firing=, next_firing=)``, both computed by the master from the schedule), and its grant is
the lease statement of ``leasegrant.py`` with another condition::

      WHERE firing IS NOT NULL AND firing < :firing         -- not served yet
        AND :firing <= now AND now < :next_firing            -- its time has come, not gone
        AND (expires_at IS NULL OR expires_at <= now)        -- nobody runs it now
      SET firing = :firing, next_due = :next_firing, ...

``firing`` is the latest firing the fleet served: each firing is granted once, whatever
the asking server's clock says, and a firing whose successor has come is never granted
(the asker is behind: it asks again for the latest, so missed firings are skipped, not run
in a burst). The row is made first (once per store and name) with ``firing`` set to the
database's ``now`` (or, for a row of a script that ran on a period, set then): a new
schedule starts with its next firing, and a whole fleet that was down over a firing runs it
once, late, when it is back. So the grant itself is never an insert.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Float,
    Row,
    Text,
    and_,
    bindparam,
    cast,
    func,
    or_,
)
from sqlalchemy import literal as sql_literal

from pandaserver.db.base.servertime import UtcDateTime, db_now_expr, db_now_plus, seconds_between
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.base.upsert import conditional_upsert, upsert_or_else
from pandaserver.db.stores import grantrun

# PostgreSQL: every grant statement notifies this channel (``grant_announce``)
GRANT_CHANNEL = "panda_daemon_grant"
RETURNED = ("generation", "owner_server", "next_due", "expires_at", "acquired_at",
            "contended_at", "firing")


def grant_owner(p_server: Any, p_period: Any) -> dict[str, Any]:
    """The columns a grant sets (holder, its times, the period in force): the same for a
    period's grant (leasegrant.py) and a firing's."""
    t = daemon_lease
    now = db_now_expr()
    return {
        "owner_server": p_server,
        "owner_pid": bindparam("lease_pid", type_=t.c.owner_pid.type),
        "owner_token": bindparam("lease_token", type_=t.c.owner_token.type),  # 0011
        "acquired_at": now,
        "expires_at": db_now_plus(bindparam("lease_ttl", type_=Float())),
        "period": p_period,
        "updated_at": now,
    }


@functools.cache
def grant_announce() -> Any:
    """The grant's notice (PostgreSQL): ``pg_notify`` on ``GRANT_CHANNEL`` with the granted
    row's name, generation, holder and ``due_in`` (seconds from the grant to the next due
    time, both on the database's clock), as JSON. Evaluated in the grant statement's
    RETURNING for a granted row only (``upsert_or_else``'s ``announce``), so it costs no
    statement and is delivered only if the grant commits; the fallback servers that hear it
    skip their lease-table read (daemons/fleet/grantwatch.py)."""
    t = daemon_lease
    payload = func.json_build_object(
        "name", t.c.name, "generation", t.c.generation, "server", t.c.owner_server,
        "due_in", seconds_between(t.c.next_due, t.c.acquired_at))
    return func.pg_notify(sql_literal(GRANT_CHANNEL), cast(payload, Text()))


def finished_by_holder(p_server: Any) -> Any:
    """A grant's term: the lease is still held under ``:lease_finished``, a generation this
    very holder ran and finished (a deferred release: daemons/fleet/releases.py), so the
    grant may take it. The row must name this server and pid, and this master process's
    token when one is given (after a failover another server may hold that generation).

    Or, with ``:lease_adopt``, under any generation granted to this very master process
    (its token required): a grant whose call the master gave up on (no answer in time, the
    connection cut) that the database committed all the same. No run lives under it, and
    the master does not know its generation; without this it would refuse itself until
    the lease expired."""
    t = daemon_lease
    p_token = bindparam("lease_token", type_=t.c.owner_token.type)
    adopt = and_(bindparam("lease_adopt", type_=Boolean()), t.c.owner_token == p_token)
    return and_(or_(t.c.generation == bindparam("lease_finished", type_=BigInteger()), adopt),
                t.c.owner_server == p_server,
                t.c.owner_pid == bindparam("lease_pid", type_=t.c.owner_pid.type),
                or_(p_token.is_(None), t.c.owner_token == p_token))


class FiringGrants:
    """The statements of one ``LeaseStore`` for firings (built once per dialect), and the
    names whose row is known to exist."""

    def __init__(self) -> None:
        self._statements: dict[str, Any] = {}
        self._seed_statements: dict[str, Any] = {}
        self._seeded: set[str] = set()

    def attempt(self, conn: Connection, name: str, server: str, pid: int, period: float,
                ttl: float, firing: datetime, next_firing: datetime,
                token: str | None = None, finished: int | None = None,
                run_id: int | None = None, ended: grantrun.Ended | None = None,
                adopt: bool = False,
                ) -> tuple[bool, Row[Any] | None, dict[str, Any]]:
        """Grant ``name``'s lease for ``firing`` if the rule allows, else count the
        refusal; (granted, the row's ``RETURNED`` columns as the statement left it, the
        statement's parameters). On PostgreSQL a grant also writes the run's row
        (``run_id``: ``grantrun.py``); elsewhere the caller does, in its transaction."""
        t = daemon_lease
        now = db_now_expr()
        p_server = bindparam("lease_server", type_=t.c.owner_server.type)
        p_firing = bindparam("lease_firing", type_=UtcDateTime())
        p_next = bindparam("lease_next", type_=UtcDateTime())
        p_period = bindparam("lease_period", type_=Float())
        key = bindparam("lease_name", type_=t.c.name.type)
        owner = grant_owner(p_server, p_period)
        params = {"lease_name": name, "lease_server": server, "lease_pid": pid,
                  "lease_token": token, "lease_finished": finished, "lease_adopt": adopt,
                  "lease_period": float(period), "lease_ttl": float(ttl),
                  "lease_firing": firing, "lease_next": next_firing,
                  **grantrun.params(run_id, ended)}
        if name not in self._seeded:  # the row first: the grant below is never an insert
            conditional_upsert(
                conn, t,
                {"name": key, "generation": 0, "next_due": p_firing, "period": p_period,
                 "updated_at": now, "contended": 0, "firing": now},
                key=["name"], set_={"firing": now}, where=t.c.firing.is_(None),
                returning=[t.c.name], params=params, cache=self._seed_statements)
            self._seeded.add(name)
        due = and_(t.c.firing.is_not(None), t.c.firing < p_firing, p_firing <= now,
                   now < p_next, or_(t.c.expires_at.is_(None), t.c.expires_at <= now,
                                     finished_by_holder(p_server)))
        granted, row = upsert_or_else(
            conn, t,
            {"name": key, "generation": 1, **owner, "next_due": p_next, "contended": 0,
             "contended_by": None, "contended_at": None, "firing": p_firing},
            key=["name"],
            set_={"generation": t.c.generation + 1, **owner, "next_due": p_next,
                  "firing": p_firing},
            where=due,
            otherwise={"contended": t.c.contended + 1, "contended_by": p_server,
                       "contended_at": now},
            returning=[t.c[column] for column in RETURNED],
            params=params, cache=self._statements, announce=grant_announce(),
            also=grantrun.ctes)
        return granted, row, params


def refusal_wait(row: Row[Any], firing: datetime) -> tuple[float, bool]:
    """A refused firing's (wait, lease live): until the row's next firing when ``firing``
    was served already, until ``firing`` when it has not come yet by the database's clock,
    and at least until a live lease expires; 0 when the asker is behind (it asks again for
    the latest firing, learning the database's clock from the answer's ``db_now``).
    ``contended_at`` is the refusing statement's database time."""
    now: datetime = row.contended_at
    wait = 0.0
    if row.firing is not None and row.firing >= firing:
        wait = max(0.0, (row.next_due - now).total_seconds())
    elif firing > now:
        wait = (firing - now).total_seconds()
    expires_in = None if row.expires_at is None else (row.expires_at - now).total_seconds()
    live = expires_in is not None and expires_in > 0
    if live and expires_in is not None:
        wait = max(wait, expires_in)
    return wait, live

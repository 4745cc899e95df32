"""Fenced, fleet-wide leases for sync scripts, timed by the database clock only.

A lease row per script name. ``try_acquire`` is one atomic statement::

    INSERT INTO daemon_lease (...)
      VALUES (name, 1, me, pid, now, now + ttl, now + period, ...)
    ON CONFLICT (name) DO UPDATE SET generation = generation + 1, owner = me, ...,
        next_due = CASE WHEN next_due <= now
                        THEN max(next_due + period, now + period - tolerance)
                        ELSE now + period END
      WHERE (next_due <= now OR acquired_at + :period <= now)
        AND (expires_at IS NULL OR expires_at <= now)
    RETURNING generation, next_due, expires_at, ...

so of any number of servers racing for a due lease exactly one gets it. Every
grant bumps ``generation``; ``release`` and ``renew`` must name it, so a holder that
lost its lease (expired and re-granted, or force-released) changes nothing. A master also
names itself (``Holder``: server, pid and its random id per process, recorded by the grant
in ``owner_token``): after a failover to a standby that missed a grant, the same
generation can be granted again to another server, and the old holder's renewal must not
renew that lease. A lease
lives ``ttl`` seconds (``[daemon] lease_ttl``) and its holder renews it while its run
lives; ``next_due`` is kept on release. A grant on time (at most ``tolerance`` =
``min(1 s, period / 10)`` after ``next_due``, ``db/base/servertime.py``: ``due_tolerance``)
keeps the grid (``next_due + period``: no drift); a later one (a fallback server, an
overrun, the first grant after the whole fleet was down) counts the period from itself,
less the tolerance; so two grants are never closer than ``period - tolerance``, missed
periods are never run in a burst, and the grant returns ``due_in`` for the master to keep
its own due time in step. The grant condition also honours the
*requesting* server's period (``acquired_at + period <= now``), so a period shortened by
a reload takes effect at the next grant, not one old period later; such a grant (and the
first) restarts the grid at now + period.

A refused attempt adds one to the row's ``contended`` and records who (``contended_by``)
and when (``contended_at``): history needs no row per losing server per period. Its
answer (holder, next due time, wait) is read from the row as that update left it, the
newest committed version. On PostgreSQL grant and refusal are one statement (a CTE,
``pandaserver/db/base/upsert.py``); SQLite adds an ``UPDATE ... RETURNING`` on a refusal;
MySQL/MariaDB fold both into ``INSERT ... ON DUPLICATE KEY UPDATE`` plus a read-back.
See docs/database.md.

A sync script on a ``cron`` schedule asks for a *firing* instead (``try_acquire(...,
firing=, next_firing=)``), granted once per firing on the database's clock alone: the
statement and its rule are in ``pandaserver/db/stores/leasefirings.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Row,
    and_,
    bindparam,
    case,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from pandaserver.db.base.servertime import (
    db_now_expr,
    db_now_plus,
    due_tolerance,
    next_due_after,
    seconds_between,
)
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.base.upsert import upsert_or_else
from pandaserver.db.direct.fleetrows import LeaseRow as LeaseRow
from pandaserver.db.direct.fleetrows import lease_row
from pandaserver.db.stores import grantrun
from pandaserver.db.stores.leasefirings import (
    FiringGrants,
    finished_by_holder,
    grant_announce,
    grant_owner,
    refusal_wait,
)

FORCE_RELEASE_ATTEMPTS = 5
T = TypeVar("T")
log = logging.getLogger(__name__)


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
    # holder has not released it yet: daemons/fleet/dbleases.py)
    held_past_due: bool = False
    # granted with the run's ``running`` row written by the grant itself (grantrun.py)
    run_row: bool = False


@dataclass(frozen=True)
class Holder:
    """The master process a lease is granted to: its server, pid, and random id per process."""

    server: str
    pid: int
    token: str


def _held_by(holder: Holder | None) -> list[Any]:
    """The terms that make a renewal or release match only ``holder``'s own grant (none
    without one: ``panda-daemon``'s commands and older callers)."""
    if holder is None:
        return []
    t = daemon_lease
    return [t.c.owner_server == holder.server, t.c.owner_pid == holder.pid,
            t.c.owner_token == holder.token]


def _check_seconds(what: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got: {value!r}")


def _check_name(name: str) -> None:
    if not name or len(name) > 128:
        raise ValueError(f"a lease name must have 1 to 128 characters, got: {name!r}")


class LeaseStore:
    """Lease operations on one engine; every method is one short transaction.

    Statements run in autocommit: each is atomic on its own, and no transaction is
    held open between them.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._grant_statements: dict[str, Any] = {}  # by dialect: built once (see upsert.py)
        # called on each connection before a statement runs: a master's failover gate
        # refuses a server it has not acted on yet (daemons/fleet/failover.py)
        self.guard: Callable[[], None] | None = None
        self._firings = FiringGrants()  # a cron script's grants (statements, rows made)
        self._run_rows: dict[str, Any] = {}  # SQLite/MySQL: a grant's run row (grantrun.py)
        # SQLite/MySQL: a grant that writes its run's row is one transaction with it
        self._tx = engine.execution_options(
            isolation_level="SERIALIZABLE" if engine.dialect.name == "sqlite"
            else "READ COMMITTED")

    def _run(self, operation: Callable[[Connection], T], transaction: bool = False) -> T:
        """Run on an autocommit connection (``transaction``: in one transaction); once
        more on a fresh one after a disconnect.

        A statement that met a dead connection (the server restarted) was not executed.
        If a connection broke after a grant committed, the retry finds the lease taken
        and says not granted: the run is skipped until the lease expires, never doubled.
        """
        for attempt in (1, 2):
            try:
                with (self._tx if transaction else self._auto).connect() as conn:
                    if self.guard is not None:
                        self.guard()
                    if not transaction:
                        return operation(conn)
                    with conn.begin():
                        return operation(conn)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
                log.info("lease statement met a dropped database connection; retrying once")
        raise AssertionError("unreachable")  # pragma: no cover

    def try_acquire(
        self, name: str, server: str, pid: int, period: float, ttl: float,
        firing: datetime | None = None, next_firing: datetime | None = None,
        token: str | None = None,
        finished: int | None = None,
        run_id: int | None = None,
        ended: grantrun.Ended | None = None,
        adopt: bool = False,
    ) -> LeaseResult:
        """Take the lease if it is due and not held; when not, count the refusal.

        Due: ``next_due`` has come, or ``period`` (this server's, in force now) has passed
        since the last grant. A grant sets the owner, bumps the generation,
        ``expires_at = now + ttl`` and ``next_due`` to ``max(next_due + period, now +
        period - due_tolerance(period))`` when it was due by ``next_due`` (on time: the
        grid kept; late: never closer than that to this grant), else (first grant, or due
        by a period shortened by a reload) ``now + period``. A refusal adds one to
        ``contended`` and records this server and the time; its answer (holder, wait)
        comes from the row as the refusal left it. One statement on PostgreSQL, two on
        SQLite, the upsert and its read-back on MySQL.

        ``finished``: a generation of this lease that this very holder (``server`` and
        ``pid``) ran and finished but has not released yet (a deferred release, see
        daemons/fleet/dbleases.py): while it is still the current one, the lease counts as
        not held, so the grant is also its release, in the same statement. Never another
        holder's: the row must still name this server and pid.

        ``run_id`` (with ``token``, the master's id): the run this grant is for; when
        granted, its ``running`` history row is written by the same statement (PostgreSQL)
        or transaction (``grantrun.py``), so a holder killed right after its grant still
        leaves a row for the generation (``LeaseResult.run_row``). ``ended``: how the run
        of ``finished`` ended, written to its row by the same grant (when granted).

        ``adopt``: the same for whatever generation is held by this very master process
        (``token`` required): the master gave up on an earlier grant call of this lease,
        which the database may have committed unseen (``finished_by_holder``).
        """
        _check_name(name)
        for what, value in (("period", period), ("ttl", ttl)):
            _check_seconds(what, value)
        if firing is not None:
            if next_firing is None or next_firing <= firing:
                raise ValueError(f"a cron grant needs the firing after {firing!r}, got:"
                                 f" {next_firing!r}")
            return self._try_firing(name, server, pid, period, ttl, firing, next_firing, token,
                                    finished, run_id, ended, adopt)
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
        in_tx = self._in_transaction(token, run_id, ended)

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
                cache=self._grant_statements,
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

        return self._run(attempt, in_tx)

    def _in_transaction(self, token: str | None, run_id: int | None,
                        ended: grantrun.Ended | None) -> bool:
        """A grant that writes run rows needs a transaction where they are statements of
        their own (not on PostgreSQL: one statement)."""
        return token is not None and (run_id is not None or ended is not None) \
            and self.engine.dialect.name != "postgresql"

    def _run_row(self, conn: Connection, generation: int, params: dict[str, Any]) -> None:
        """SQLite, MySQL: the granted run's row, in the grant's transaction (PostgreSQL
        wrote it in the grant statement)."""
        if conn.dialect.name != "postgresql":
            grantrun.insert_row(conn, generation, params, self._run_rows)

    def _try_firing(self, name: str, server: str, pid: int, period: float, ttl: float,
                    firing: datetime, next_firing: datetime,
                    token: str | None, finished: int | None,
                    run_id: int | None, ended: grantrun.Ended | None,
                    adopt: bool = False) -> LeaseResult:
        """``try_acquire`` for a cron script's ``firing`` (``leasefirings.py``)."""
        with_row = run_id is not None and token is not None
        in_tx = self._in_transaction(token, run_id, ended)

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

        return self._run(attempt, in_tx)

    def release(self, name: str, generation: int, holder: Holder | None = None,
                ended: grantrun.Ended | None = None) -> bool:
        """End the holder's lease (``expires_at`` cleared, ``next_due`` kept).

        Only when ``generation`` is still current (and granted to ``holder``, when given);
        a stale one changes nothing and returns False. ``ended`` (with ``holder``): how
        the holder's run under it ended, written to its row by the same statement
        (PostgreSQL) or just before (``grantrun.py``), so it lands before any later grant
        this holder sends.
        """
        t = daemon_lease
        stmt = (
            update(t)
            .where(t.c.name == name, t.c.generation == generation, *_held_by(holder))
            .values(expires_at=None, updated_at=db_now_expr())
        )
        if ended is None or holder is None:
            return self._run(lambda conn: conn.execute(stmt).rowcount == 1)
        bound = {**grantrun.params(None, ended), "lease_token": holder.token}
        return self._run(lambda conn: grantrun.release_with_end(
            conn, stmt, bound, self._run_rows) == 1)

    def release_many(self, leases: list[tuple[str, int]], holder: Holder | None = None) -> int:
        """``release`` each (name, generation) in one statement; how many were released
        (a stale generation, or one granted to another holder, changes nothing and is not
        counted)."""
        if not leases:
            return 0
        t = daemon_lease
        stmt = (
            update(t)
            .where(or_(*(and_(t.c.name == name, t.c.generation == generation)
                         for name, generation in leases)), *_held_by(holder))
            .values(expires_at=None, updated_at=db_now_expr())
        )
        return self._run(lambda conn: max(0, conn.execute(stmt).rowcount))

    def renew(self, name: str, generation: int, extend: float) -> bool:
        """Push ``expires_at`` to now + ``extend`` while the lease is still this generation's.

        False (and no change) for a stale generation or a released lease.
        """
        return name in self.renew_many([(name, generation)], extend)

    def renew_many(self, leases: list[tuple[str, int]], extend: float,
                   holder: Holder | None = None) -> set[str]:
        """``renew`` each (name, generation) on one connection; the names renewed.

        A lease is renewed only while it is still that generation's (granted to
        ``holder``, when given) and not released; an expired one that nobody took since is
        revived (still fenced by generation and holder).
        """
        _check_seconds("extend", extend)
        t = daemon_lease

        def renew_all(conn: Connection) -> set[str]:
            renewed = set()
            for name, generation in leases:
                stmt = (
                    update(t)
                    .where(t.c.name == name, t.c.generation == generation,
                           t.c.expires_at.is_not(None), *_held_by(holder))
                    .values(expires_at=db_now_plus(extend), updated_at=db_now_expr())
                )
                if conn.execute(stmt).rowcount == 1:
                    renewed.add(name)
            return renewed

        return self._run(renew_all)

    def force_release(self, name: str) -> LeaseRow | None:
        """Free a lease whoever holds it (``panda-daemon unlock``).

        Bumps the generation, so the old holder's ``release``/``renew`` are fenced, and
        clears the expiry; ``next_due`` is kept. Returns the row as it was just before,
        or None when there is no lease of that name. A compare-and-set on (generation,
        expires_at), retried if the holder moved in between.
        """
        return self._run(lambda conn: self._force_release(conn, name))

    def _force_release(self, conn: Connection, name: str) -> LeaseRow | None:
        t = daemon_lease
        for _ in range(FORCE_RELEASE_ATTEMPTS):
            before = self._get(conn, name)
            if before is None:
                return None
            same_expiry = (
                t.c.expires_at.is_(None)
                if before.expires_at is None
                else t.c.expires_at == before.expires_at
            )
            stmt = (
                update(t)
                .where(t.c.name == name, t.c.generation == before.generation, same_expiry)
                .values(generation=t.c.generation + 1, expires_at=None,
                        updated_at=db_now_expr())
            )
            if conn.execute(stmt).rowcount == 1:
                return before
        raise RuntimeError(f"lease {name!r} kept changing while being released; try again")

    def get(self, name: str) -> LeaseRow | None:
        return self._run(lambda conn: self._get(conn, name))

    def list_leases(self) -> list[LeaseRow]:
        """Every lease, by name, with the database's current time."""
        stmt = leases_statement()
        return self._run(lambda conn: [_lease_row(row) for row in conn.execute(stmt).all()])

    def _get(self, conn: Connection, name: str) -> LeaseRow | None:
        row = conn.execute(_select_rows().where(daemon_lease.c.name == name)).one_or_none()
        return _lease_row(row) if row is not None else None


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


def _select_rows() -> Any:
    return select(daemon_lease, db_now_expr().label("db_now"))


def leases_statement() -> Any:
    """``list_leases``' statement: every lease by name, with the database's now."""
    return _select_rows().order_by(daemon_lease.c.name)


def _lease_row(row: Row[Any]) -> LeaseRow:
    return lease_row(row._mapping)

"""Fenced, fleet-wide leases for sync scripts, timed by the database clock only.

A lease row per script name. ``try_acquire`` is one atomic statement (insert, or update
where the lease is due and not held; the statement, its rule and its answer are in
``pandaserver/db/stores/leasegrant.py``), so of any number of servers racing for a due
lease exactly one gets it. Every
grant bumps ``generation``; ``release`` and ``renew`` must name it, so a holder that
lost its lease (expired and re-granted, or force-released) changes nothing. A master also
names itself (``Holder``: server, pid and its random id per process, recorded by the grant
in ``owner_token``): after a failover to a standby that missed a grant, the same
generation can be granted again to another server, and the old holder's renewal must not
renew that lease. A lease
lives ``ttl`` seconds (``[daemon] lease_ttl``) and its holder renews it while its run
lives; ``next_due`` is kept on release.

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

from sqlalchemy import Connection, Engine, Row, and_, or_, select, update
from sqlalchemy.exc import DBAPIError

from pandaserver.db.base.servertime import db_now_expr, db_now_plus
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.direct.fleetrows import LeaseRow as LeaseRow
from pandaserver.db.direct.fleetrows import lease_row
from pandaserver.db.stores import grantrun
from pandaserver.db.stores.leasegrant import Grants, LeaseResult

FORCE_RELEASE_ATTEMPTS = 5
T = TypeVar("T")
log = logging.getLogger(__name__)


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
        # called on each connection before a statement runs: a master's failover gate
        # refuses a server it has not acted on yet (daemons/fleet/failover.py)
        self.guard: Callable[[], None] | None = None
        self._run_rows: dict[str, Any] = {}  # SQLite/MySQL: a grant's run row (grantrun.py)
        self._grants = Grants(engine.dialect.name, self._run_rows)  # the grant statements
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
        daemons/fleet/releases.py): while it is still the current one, the lease counts as
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
        in_tx = self._grants.in_transaction(token, run_id, ended)
        if firing is not None:
            if next_firing is None or next_firing <= firing:
                raise ValueError(f"a cron grant needs the firing after {firing!r}, got:"
                                 f" {next_firing!r}")
            return self._run(self._grants.firing(name, server, pid, period, ttl, firing,
                                                 next_firing, token, finished, run_id, ended,
                                                 adopt), in_tx)
        return self._run(self._grants.period(name, server, pid, period, ttl, token, finished,
                                             run_id, ended, adopt), in_tx)

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


def _select_rows() -> Any:
    return select(daemon_lease, db_now_expr().label("db_now"))


def leases_statement() -> Any:
    """``list_leases``' statement: every lease by name, with the database's now."""
    return _select_rows().order_by(daemon_lease.c.name)


def _lease_row(row: Row[Any]) -> LeaseRow:
    return lease_row(row._mapping)

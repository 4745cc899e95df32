"""Server heartbeats (``daemon_server``): which masters of the fleet are alive, and how
they are configured (a hash of their effective settings, to spot a server running a
different configuration); and whether any open run belongs to a master that stopped
beating (``abandoned_runs``: the cheap look that lets the sweep of dead masters' runs,
``HistoryStore.close_abandoned``, run only when it has something to close).

Both are sent every heartbeat interval by every master of the fleet, so each is one
statement built once (bound parameters, ``conditional_upsert``'s ``cache``): building and
keying a SQLAlchemy construct costs more CPU than the statement itself."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql

from pandaserver.db.base import prepared
from pandaserver.db.base.prepared import Prepared
from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import daemon_run, daemon_server
from pandaserver.db.base.upsert import UnsupportedDatabase, conditional_upsert, dialect_insert
from pandaserver.db.direct.fleetrows import ServerRow as ServerRow
from pandaserver.db.stores import runwrites


def config_hash(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings`` (sorted keys, no spaces)."""
    canonical = json.dumps(
        settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class HeartbeatStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        t = daemon_server
        # the beat's statement, built once per dialect (``conditional_upsert``'s cache)
        self._values: dict[str, Any] = {
            "pid": bindparam("beat_pid", type_=t.c.pid.type),
            "version": bindparam("beat_version", type_=t.c.version.type),
            "started_at": bindparam("beat_started_at", type_=t.c.started_at.type),
            "last_seen": db_now_expr(),
            "config_hash": bindparam("beat_config_hash", type_=t.c.config_hash.type),
            "server_time": bindparam("beat_server_time", type_=t.c.server_time.type),
        }
        self._server = bindparam("beat_server", type_=t.c.server.type)
        self._beat_statements: dict[str, Any] = {}
        self._looks: dict[tuple[float, str | None], Any] = {}
        self._combined: tuple[Any, Any] | None = None  # (look, beat and look): PostgreSQL
        # SQLite, PostgreSQL: (look, the beat's statement, the look's or None) compiled once
        self._prepared: tuple[Any, Prepared, Prepared | None] | None = None

    def beat(
        self, server: str, pid: int, version: str, started_at: datetime, config_hash: str,
        server_time: datetime | None = None, abandoned_after: float | None = None,
        except_master: str | None = None,
    ) -> bool | None:
        """Insert or refresh this server's row; ``last_seen`` is the database's now.

        ``started_at`` is the master's start (aware; for display only). ``server_time``
        is the master's wall clock now (aware), read just before the beat: compared with
        ``last_seen`` it shows the server's clock offset to the database.

        With ``abandoned_after``, also ``abandoned_runs(abandoned_after, except_master)``,
        returned (else None): on PostgreSQL in the same statement (one round trip), else
        on the same connection right after the beat.
        """
        t = daemon_server
        params = {"beat_server": server, "beat_pid": pid, "beat_version": version,
                  "beat_started_at": started_at, "beat_config_hash": config_hash,
                  "beat_server_time": server_time}
        look = (None if abandoned_after is None
                else self._look(abandoned_after, except_master))
        if Prepared.supported(self.engine):
            return self._beat_prepared(params, look)
        with self.engine.begin() as conn:
            if look is not None and conn.dialect.name == "postgresql":
                return bool(conn.execute(self._beat_and_look(look), params).scalar())
            try:
                conditional_upsert(conn, t, {"server": self._server, **self._values},
                                   ["server"], self._values, None, [t.c.server], params,
                                   cache=self._beat_statements)
            except UnsupportedDatabase:
                # Portable fallback: only this server writes its own row.
                values: dict[str, Any] = {
                    "pid": pid, "version": version, "started_at": started_at,
                    "last_seen": db_now_expr(), "config_hash": config_hash,
                    "server_time": server_time,
                }
                if conn.execute(update(t).where(t.c.server == server).values(values)
                                ).rowcount == 0:
                    conn.execute(insert(t).values(server=server, **values))
            return None if look is None else bool(conn.execute(look).scalar())

    def _beat_prepared(self, params: dict[str, Any], look: Any) -> bool | None:
        """The beat (and the look) as statements compiled once, on the driver (prepared.py):
        on PostgreSQL one statement with the look, on SQLite two on one connection."""
        if self._prepared is None or self._prepared[0] is not look:
            name = self.engine.dialect.name
            if name == "postgresql" and look is not None:
                self._prepared = (look, Prepared(self._beat_and_look(look)), None)
            else:
                t = daemon_server
                upsert = dialect_insert(name)(t).values({"server": self._server, **self._values})
                upsert = upsert.on_conflict_do_update(index_elements=[t.c.server],
                                                      set_=self._values)
                self._prepared = (look, Prepared(upsert),
                                  Prepared(look) if look is not None else None)
        _, beat, own_look = self._prepared
        with prepared.run(self.engine) as session:
            rows = session.rows(beat, params, write=True)
            if look is None:
                return None
            if own_look is not None:
                rows = session.rows(own_look)
            return bool(rows[0][0])

    def abandoned_runs(self, stale_after: float, except_master: str | None = None) -> bool:
        """Whether an open run exists that ``HistoryStore.close_abandoned(stale_after,
        except_master)`` would close (its master has not beaten for ``stale_after`` s): one
        read with the sweep's own condition, outside any transaction. Almost always False,
        so the sweep's transaction (three round trips on PostgreSQL) is left out."""
        with self.engine.connect() as conn:
            return bool(conn.execute(self._look(stale_after, except_master)).scalar())

    def _look(self, stale_after: float, except_master: str | None) -> Any:
        key = (stale_after, except_master)
        look = self._looks.get(key)
        if look is None:
            condition = runwrites.lost_abandoned(stale_after, except_master).whereclause
            look = select(exists().where(condition).select_from(daemon_run))
            self._looks = {key: look}  # one shape at a time (the interval rarely changes)
            self._combined = None
        return look

    def _beat_and_look(self, look: Any) -> Any:
        """PostgreSQL: the beat's upsert as a data-modifying CTE and the look as the query
        over it, one statement (the look sees the rows as they were before the beat; it
        never concerns this master's own row)."""
        if self._combined is None or self._combined[0] is not look:
            t = daemon_server
            upsert = postgresql.insert(t).values({"server": self._server, **self._values})
            upsert = upsert.on_conflict_do_update(index_elements=[t.c.server],
                                                  set_=self._values)
            beaten = upsert.returning(t.c.server).cte("beat")
            self._combined = (look, select(look.scalar_subquery()).select_from(beaten))
        return self._combined[1]

    def forget(self, server: str) -> bool:
        """Remove a server's row (a clean shutdown, or an operator's cleanup)."""
        with self.engine.begin() as conn:
            return conn.execute(delete(daemon_server).where(daemon_server.c.server == server)
                                ).rowcount == 1

    def list_servers(self) -> list[ServerRow]:
        """Every server that ever beat and was not forgotten, by name."""
        with self.engine.connect() as conn:
            return [ServerRow(**row._mapping) for row in conn.execute(servers_statement()).all()]


def servers_statement() -> Any:
    """``list_servers``' statement: every server's row, with the database's now."""
    return select(daemon_server, db_now_expr().label("db_now")).order_by(daemon_server.c.server)

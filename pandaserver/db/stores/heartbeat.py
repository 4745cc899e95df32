"""Server heartbeats (``daemon_server``): which masters of the fleet are alive, and how
they are configured (a hash of their effective settings, to spot a server running a
different configuration)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import daemon_server
from pandaserver.db.base.upsert import UnsupportedDatabase, conditional_upsert


def config_hash(settings: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``settings`` (sorted keys, no spaces)."""
    canonical = json.dumps(
        settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ServerRow:
    server: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    config_hash: str
    db_now: datetime
    server_time: datetime | None = None
    state: str | None = None  # JSON the master reports of itself (draining, crash-looping)

    @property
    def age(self) -> float:
        """Seconds since the last heartbeat, by the database clock."""
        return (self.db_now - self.last_seen).total_seconds()

    @property
    def clock_offset(self) -> float | None:
        """The server's wall clock minus the database clock at its last beat (seconds;
        positive: the server is ahead), None when the master did not send its time."""
        if self.server_time is None:
            return None
        return (self.server_time - self.last_seen).total_seconds()


class HeartbeatStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def beat(
        self, server: str, pid: int, version: str, started_at: datetime, config_hash: str,
        server_time: datetime | None = None,
    ) -> None:
        """Insert or refresh this server's row; ``last_seen`` is the database's now.

        ``started_at`` is the master's start (aware; for display only). ``server_time``
        is the master's wall clock now (aware), read just before the beat: compared with
        ``last_seen`` it shows the server's clock offset to the database.
        """
        t = daemon_server
        values: dict[str, Any] = {
            "pid": pid, "version": version, "started_at": started_at,
            "last_seen": db_now_expr(), "config_hash": config_hash, "server_time": server_time,
        }
        with self.engine.begin() as conn:
            try:
                conditional_upsert(conn, t, {"server": server, **values}, ["server"], values,
                                   None, [t.c.server])
                return
            except UnsupportedDatabase:
                pass
            # Portable fallback: only this server writes its own row.
            if conn.execute(update(t).where(t.c.server == server).values(values)).rowcount == 0:
                conn.execute(insert(t).values(server=server, **values))

    def forget(self, server: str) -> bool:
        """Remove a server's row (a clean shutdown, or an operator's cleanup)."""
        with self.engine.begin() as conn:
            return conn.execute(delete(daemon_server).where(daemon_server.c.server == server)
                                ).rowcount == 1

    def list_servers(self) -> list[ServerRow]:
        """Every server that ever beat and was not forgotten, by name."""
        stmt = select(daemon_server, db_now_expr().label("db_now")).order_by(daemon_server.c.server)
        with self.engine.connect() as conn:
            return [ServerRow(**row._mapping) for row in conn.execute(stmt).all()]

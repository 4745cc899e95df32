"""The fleet as the pages, the API, the metrics and ``panda-daemon fleet`` see it.

``FleetReader`` joins the database (``queries``; ``fleetsqlite`` for ``panda-daemon fleet``
on a SQLite file, without SQLAlchemy) with this server's configuration (the
scripts' periods) and the local status files (workers), and hands out ``Overview`` and
``ScriptDetail`` objects; ``jsonable`` turns them into the JSON of the API.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pandaserver.config import PandaConfig
from pandaserver.config.scripts import DaemonSpec
from pandaserver.db.direct.fleetrows import LeaseRow
from pandaserver.db.direct.operator_rows import Hold
from pandaserver.db.stores.runrecords import RunRow
from pandaserver.service.hoststatus import local_masters
from pandaserver.web.model import (
    FleetSnapshot,
    ScriptView,
    ServerView,
    script_views,
    server_views,
)
from pandaserver.web.settings import WebSettings

if TYPE_CHECKING:  # SQLAlchemy is imported only where the database is read through it
    from sqlalchemy import Engine

STATEMENT_TIMEOUT = 10.0  # seconds; a page never waits longer on one statement


@dataclass(frozen=True)
class LocalMaster:
    """A master of this host, from its status file."""

    server: str
    pid: int | None
    alive: bool
    n_proc: int | None
    workers_alive: int
    database_available: bool | None
    pending_history: int | None
    log_dropped: int | None = None  # log lines dropped since the start (a full log disk)
    log_failing: str | None = None  # why log lines are dropped now (None: they are written)
    lease_refused: int | None = None  # sync lease attempts refused here since the start


@dataclass(frozen=True)
class Overview:
    db_now: datetime
    stale_factor: float
    servers: list[ServerView]
    scripts: list[ScriptView]
    leases: list[LeaseRow]
    local: list[LocalMaster] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)  # pauses and drains in force

    @property
    def paused(self) -> list[Hold]:
        return [h for h in self.holds if h.kind == "pause"]

    @property
    def draining(self) -> list[ServerView]:
        return [s for s in self.servers if s.alive and s.draining]

    @property
    def crash_looping(self) -> dict[str, list[str]]:
        """Script -> the live servers where it is crash-looping."""
        found: dict[str, list[str]] = {}
        for s in self.servers:
            for name in s.crash_looping if s.alive else ():
                found.setdefault(name, []).append(s.server)
        return found

    @property
    def stale(self) -> list[ScriptView]:
        return [s for s in self.scripts if s.stale]

    @property
    def late(self) -> list[ScriptView]:
        return [s for s in self.scripts if s.late]

    @property
    def mismatched(self) -> list[ServerView]:
        return [s for s in self.servers if s.config_mismatch]

    @property
    def silent(self) -> list[ServerView]:
        return [s for s in self.servers if not s.alive]

    @property
    def log_failing(self) -> list[LocalMaster]:
        """Live masters of this host that cannot write log lines now."""
        return [m for m in self.local if m.alive and m.log_failing]

    def summary(self) -> dict[str, Any]:
        return {
            "stale": [s.name for s in self.stale], "late": [s.name for s in self.late],
            "config_mismatch": [s.server for s in self.mismatched],
            "silent_servers": [s.server for s in self.silent],
            "paused": sorted({h.name for h in self.paused}),
            "draining_servers": [s.server for s in self.draining],
            "crash_looping": self.crash_looping,
            "log_failing": [m.server for m in self.log_failing],
        }


@dataclass(frozen=True)
class ScriptDetail:
    db_now: datetime
    script: ScriptView | None  # None: named nowhere (no config, history or lease)
    runs: list[RunRow]


def local_master_views(state_dir: Path | None) -> list[LocalMaster]:
    found = []
    for data in local_masters(state_dir):
        database = data.get("database") if isinstance(data.get("database"), dict) else None
        found_health = data.get("logging")
        health: dict[str, Any] = found_health if isinstance(found_health, dict) else {}
        pid = data.get("pid")
        n_proc = data.get("n_proc")
        found.append(LocalMaster(
            server=str(data.get("server", "?")), pid=pid if isinstance(pid, int) else None,
            alive=bool(data["master_alive"]), n_proc=n_proc if isinstance(n_proc, int) else None,
            workers_alive=int(data["workers_alive"]),
            database_available=bool(database["available"]) if database else None,
            pending_history=int(database.get("pending_history", 0)) if database else None,
            log_dropped=_int_or_none(health.get("dropped")),
            log_failing=str(health["failing"]) if health.get("failing") else None,
            lease_refused=_refused(data.get("scripts")),
        ))
    return found


def _refused(scripts: object) -> int | None:
    """Lease attempts refused on a master, summed over its scripts (None: a master that
    does not report them)."""
    if not isinstance(scripts, list):
        return None
    reported = [s for s in scripts if isinstance(s, dict) and "contention" in s]
    if scripts and not reported:
        return None
    total = 0
    for s in reported:
        c = s["contention"]
        refused = c.get("refused") if isinstance(c, dict) else None
        total += refused if isinstance(refused, int) and not isinstance(refused, bool) else 0
    return total


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class FleetReader:
    """Reads the fleet for one configuration; the engine is made on first use, in the
    process that uses it (safe under forking WSGI servers), and shared by its threads."""

    def __init__(self, cfg: PandaConfig, settings: WebSettings,
                 state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.settings = settings
        self.state_dir = state_dir
        self._engine: Engine | None = None
        self._engine_pid = 0
        self._lock = threading.Lock()

    @property
    def specs(self) -> Mapping[str, DaemonSpec]:
        return self.cfg.daemon.scripts

    @property
    def engine(self) -> Engine:
        import os

        from pandaserver.db.base.engine import make_engine

        with self._lock:
            if self._engine is None or self._engine_pid != os.getpid():
                self._engine = make_engine(self.cfg, pool_size=4,
                                           statement_timeout=STATEMENT_TIMEOUT)
                self._engine_pid = os.getpid()
            return self._engine

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def overview(self) -> Overview:
        from pandaserver.db.stores.operator_commands import ControlStore
        from pandaserver.web import queries

        return self.view(queries.read_fleet(self.engine), ControlStore(self.engine).holds())

    def view(self, snap: FleetSnapshot, holds: list[Hold]) -> Overview:
        """The overview of what was read (``snap``, the ``holds`` in force)."""
        servers = server_views(snap.servers, self.cfg.daemon.heartbeat_interval)
        scripts = script_views(self.specs, snap.last_runs, snap.facts, snap.leases, servers,
                               snap.db_now, self.settings.stale_factor, holds)
        return Overview(db_now=snap.db_now, stale_factor=self.settings.stale_factor,
                        servers=servers, scripts=scripts, leases=snap.leases,
                        local=local_master_views(self.state_dir), holds=holds)

    def script(self, name: str, limit: int) -> ScriptDetail:
        """One script's view (as ``overview()`` has it, from that script's rows only) and its
        newest ``limit`` runs."""
        from pandaserver.db.stores.operator_commands import ControlStore
        from pandaserver.web import queries

        snap = queries.read_fleet(self.engine, script=name)
        servers = server_views(snap.servers, self.cfg.daemon.heartbeat_interval)
        specs = {name: self.specs[name]} if name in self.specs else {}
        views = script_views(specs, snap.last_runs, snap.facts, snap.leases, servers,
                             snap.db_now, self.settings.stale_factor,
                             [h for h in ControlStore(self.engine).holds() if h.name == name])
        view = next((s for s in views if s.name == name), None)
        now, runs = queries.read_runs(self.engine, name, limit)
        return ScriptDetail(db_now=now, script=view, runs=runs)


def jsonable(value: Any) -> Any:
    """Dataclasses (with their ``duration``-like properties), datetimes as ISO 8601 text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for extra in ("duration", "held", "uptime", "expires_in", "due_in", "contended_ago"):
            attr = getattr(type(value), extra, None)
            if isinstance(attr, property):
                out[extra] = jsonable(getattr(value, extra))
        return out
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value

"""What the fleet pages show, decided by pure functions of what the database holds.

Every decision takes the database's ``now`` as an argument (never a clock), so tests
call them with plain values:

- a server is **alive** while its last heartbeat is at most ``ALIVE_BEATS`` heartbeat
  intervals old;
- its **config mismatch** flag is set when live servers disagree on the configuration
  hash and its hash is not the one most of them have (all of them when there is no
  single most common one);
- its **clock offset** is its wall clock minus the database clock at its last beat;
- a script is **late** when it is past its due time by more than the master's own
  late-warning threshold (``max(300 s, period / 2)``, as in ``schedule.late_threshold``)
  and not running: a sync script by its fleet-wide lease, another script on any live
  server that ran it (due one period after its last start there);
- a script is **stale** when no server of the fleet finished a successful run of it for
  ``stale_factor`` x its period; one that never succeeded counts from its first run in
  the history, or else from the start of the longest-running live master;
- a **cron** script is due at its next firing after its last start (on each server that
  ran it; a sync one by its lease), late past the same threshold (its period being the
  shortest interval between two firings), and stale once ``stale_factor`` firings (rounded
  up) passed since its last success (or the same reference as above), not k periods;
- a script is **paused** when an operator paused it fleet-wide, or on every live server:
  it is expected not to run, so it is never stale or late (it shows as paused instead).

Scripts disabled or not in this server's configuration are shown but never flagged.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pandaserver.config.cronspec import CronSchedule, firing_text
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master.schedule import late_threshold
from pandaserver.db.direct.fleetrows import LeaseRow, ServerRow
from pandaserver.db.direct.operator_rows import ALIVE_BEATS as ALIVE_BEATS
from pandaserver.db.direct.operator_rows import EVERY, Hold
from pandaserver.db.stores.runrecords import SKIPPED, RunRow
from pandaserver.fmt import span


def seconds(a: datetime, b: datetime) -> float:
    """``a - b`` in seconds."""
    return (a - b).total_seconds()


@dataclass(frozen=True)
class ServerView:
    server: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    heartbeat_age: float
    alive: bool
    config_hash: str
    config_mismatch: bool
    clock_offset: float | None
    # what the master last reported (operator commands, crash loops): see reported_state
    draining: bool = False
    crash_looping: tuple[str, ...] = ()

    @property
    def uptime(self) -> float:
        """Seconds since the master started, its start corrected by its clock offset."""
        start = self.started_at.timestamp() - (self.clock_offset or 0.0)
        return self.last_seen.timestamp() + self.heartbeat_age - start


def server_views(rows: Iterable[ServerRow], heartbeat_interval: float) -> list[ServerView]:
    rows = list(rows)
    alive = {r.server: r.age <= ALIVE_BEATS * heartbeat_interval for r in rows}
    counted = Counter(r.config_hash for r in rows if alive[r.server]) or Counter(
        r.config_hash for r in rows)
    ranked = counted.most_common(2)
    majority = ranked[0][0] if len(ranked) == 1 or (ranked and ranked[0][1] > ranked[1][1]) \
        else None
    return [
        ServerView(
            server=r.server, pid=r.pid, version=r.version, started_at=r.started_at,
            last_seen=r.last_seen, heartbeat_age=r.age, alive=alive[r.server],
            config_hash=r.config_hash,
            config_mismatch=len(counted) > 1 and r.config_hash != majority,
            clock_offset=r.clock_offset,
            **reported_state(r.state),
        )
        for r in rows
    ]


def reported_state(text: str | None) -> dict[str, Any]:
    """``draining`` and ``crash_looping`` from a master's ``daemon_server.state`` JSON."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    looping = data.get("crash_looping")
    return {"draining": data.get("draining") is True,
            "crash_looping": tuple(sorted(looping)) if isinstance(looping, dict) else ()}


@dataclass(frozen=True)
class ServerRun:
    """The newest run (skips left out) of one script on one server."""

    server: str
    run_id: int
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    duration: float | None
    error: str | None
    next_due: datetime | None
    overdue: float | None  # seconds past next_due (negative: not yet due)
    late: bool


@dataclass(frozen=True)
class ScriptView:
    name: str
    configured: bool  # in this server's configuration
    enabled: bool
    period: float | None
    timeout: float | None
    sync: bool | None
    runs: list[ServerRun]
    next_due: datetime | None
    overdue: float | None
    late: bool
    last_success_at: datetime | None
    since_success: float | None
    stale_after: float | None  # stale_factor x period
    stale: bool
    lease_holder: str | None
    paused_on: tuple[str, ...] = ()  # where an operator paused it ("*": fleet-wide)
    paused: bool = False  # paused fleet-wide or on every live server: not expected to run
    crash_looping_on: tuple[str, ...] = ()  # live servers where it is crash-looping
    cron: str | None = None  # a cron script's expression (then ``period`` is its shortest
    timezone: str | None = None  # interval), and the zone its firings are read in


@dataclass(frozen=True)
class ScriptFacts:
    """What the history says about one script fleet-wide."""

    first_seen: datetime | None = None
    last_success: datetime | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    """What the views are made of, as read from the database (``queries.read_fleet``, or
    ``fleetsqlite.read_fleet`` on a SQLite file without SQLAlchemy)."""

    db_now: datetime
    servers: list[ServerRow]
    leases: list[LeaseRow]
    last_runs: list[RunRow]  # newest non-skipped run per (script, server)
    facts: dict[str, ScriptFacts]


def _judged(spec: DaemonSpec | None) -> bool:
    return spec is not None and spec.enable


def _server_run(row: RunRow, period: float | None, judge: bool, sync: bool, alive: bool,
                now: datetime, cron: CronSchedule | None = None) -> ServerRun:
    next_due = overdue = None
    late = False
    if period is not None and not sync and row.ended_at is not None:
        next_due = row.started_at + timedelta(seconds=period) if cron is None else \
            datetime.fromtimestamp(cron.next_after(row.started_at.timestamp()), tz=UTC)
        overdue = seconds(now, next_due)
        late = judge and alive and overdue > late_threshold(period)
    return ServerRun(server=row.server, run_id=row.id, started_at=row.started_at,
                     ended_at=row.ended_at, outcome=row.outcome, duration=row.duration,
                     error=row.error, next_due=next_due, overdue=overdue, late=late)


def _fleet_due(runs: list[ServerRun], lease: LeaseRow | None, holder: str | None,
               period: float | None, judge: bool, alive: set[str], now: datetime
               ) -> tuple[datetime | None, float | None, bool]:
    """(next due, seconds past it, late) of a script across the fleet."""
    if lease is not None:
        overdue = seconds(now, lease.next_due)
        late = judge and holder is None and period is not None \
            and overdue > late_threshold(period)
        return lease.next_due, overdue, late
    # the live server furthest behind speaks for the script
    dues = [(r.overdue, r.next_due) for r in runs
            if r.overdue is not None and r.server in alive]
    if not dues:
        return None, None, False
    overdue, next_due = max(dues, key=lambda d: d[0])
    return next_due, overdue, any(r.late for r in runs)


def stale_decision(limit: float | None, since_success: float | None,
                   since_first_seen: float | None, fleet_uptime: float | None) -> bool:
    """True when nothing succeeded for longer than ``limit`` seconds (see the module doc)."""
    if limit is None:
        return False
    if since_success is not None:
        return since_success > limit
    reference = since_first_seen if since_first_seen is not None else fleet_uptime
    return reference is not None and reference > limit


def schedule_label(view: ScriptView) -> str:
    """How a script's schedule is shown: its period, or ``cron EXPR (ZONE)``."""
    if view.cron is not None:
        return f"cron {view.cron} ({view.timezone or 'UTC'})"
    return span(view.period)


def next_due_label(view: ScriptView) -> str | None:
    """A cron script's next due firing in its zone and in UTC (None: not a cron script, or
    no due time known)."""
    if view.cron is None or view.next_due is None:
        return None
    return firing_text(view.next_due.timestamp(), view.timezone or "UTC")


def cron_stale_limit(cron: CronSchedule, factor: float, since_success: float | None,
                     since_first_seen: float | None, fleet_uptime: float | None,
                     now: datetime) -> float | None:
    """``stale_decision``'s limit for a cron script: the seconds from the reference (last
    success, else first run, else the fleet's uptime) to the ``ceil(factor)``-th firing
    after it, so a script is stale after k firings, not k periods."""
    reference = next((r for r in (since_success, since_first_seen, fleet_uptime)
                      if r is not None), None)
    if reference is None:
        return None
    start = now.timestamp() - reference
    at = start
    for _ in range(max(1, math.ceil(factor))):
        at = cron.next_after(at)
    return at - start


def script_views(
    specs: Mapping[str, DaemonSpec],
    last_runs: Iterable[RunRow],
    facts: Mapping[str, ScriptFacts],
    leases: Iterable[LeaseRow],
    servers: Iterable[ServerView],
    now: datetime,
    stale_factor: float,
    holds: Iterable[Hold] = (),
) -> list[ScriptView]:
    """One view per script named by the configuration, the history or a lease."""
    servers = list(servers)
    alive = {s.server for s in servers if s.alive}
    paused_on: dict[str, set[str]] = {}
    for hold in holds:
        if hold.kind == "pause":
            paused_on.setdefault(hold.name, set()).add(hold.server)
    looping: dict[str, list[str]] = {}
    for server in servers:
        for looping_name in server.crash_looping if server.alive else ():
            looping.setdefault(looping_name, []).append(server.server)
    uptimes = [s.uptime for s in servers if s.alive]
    fleet_uptime = max(uptimes) if uptimes else None
    by_lease = {lease.name: lease for lease in leases}
    by_script: dict[str, list[RunRow]] = {}
    for row in last_runs:
        if row.outcome != SKIPPED:
            by_script.setdefault(row.script, []).append(row)
    names = sorted(set(specs) | set(by_script) | set(by_lease) | set(facts))
    views = []
    for name in names:
        spec = specs.get(name)
        lease = by_lease.get(name)
        fact = facts.get(name, ScriptFacts())
        judge = _judged(spec)
        period = spec.period if spec is not None else (lease.period if lease else None)
        sync = spec.sync if spec is not None else (True if lease is not None else None)
        cron = spec.cron if spec is not None else None
        runs = [_server_run(row, period, judge, bool(sync), row.server in alive, now, cron)
                for row in sorted(by_script.get(name, []), key=lambda r: r.server)]
        holder = lease.owner_server if lease is not None and lease.held else None
        next_due, overdue, late = _fleet_due(runs, lease if sync else None, holder, period,
                                             judge, alive, now)
        since_success = seconds(now, fact.last_success) if fact.last_success else None
        where_paused = paused_on.get(name, set())
        paused = is_paused(where_paused, alive)
        judge = judge and not paused
        late = late and not paused
        limit = stale_factor * period if period is not None and judge else None
        if cron is not None and judge:  # k firings, not k periods
            limit = cron_stale_limit(cron, stale_factor, since_success,
                                     seconds(now, fact.first_seen) if fact.first_seen else None,
                                     fleet_uptime, now)
        views.append(ScriptView(
            name=name, configured=spec is not None, enabled=bool(spec and spec.enable),
            period=period, timeout=spec.timeout if spec else None, sync=sync, runs=runs,
            next_due=next_due, overdue=overdue, late=late,
            last_success_at=fact.last_success, since_success=since_success,
            stale_after=limit,
            stale=stale_decision(limit, since_success,
                                 seconds(now, fact.first_seen) if fact.first_seen else None,
                                 fleet_uptime),
            lease_holder=holder,
            paused_on=tuple(sorted(where_paused)), paused=paused,
            crash_looping_on=tuple(looping.get(name, ())),
            cron=cron.expression if cron is not None else None,
            timezone=cron.zone if cron is not None else None,
        ))
    return views


def is_paused(where: set[str], alive: set[str]) -> bool:
    """Paused fleet-wide, or on every live server (and at least one is live)."""
    return EVERY in where or (bool(alive) and alive <= where)

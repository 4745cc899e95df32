"""The local master's state as a JSON file, for ``panda-daemon status`` and the web pages.

The master rewrites ``<state dir>/status-<server>.json`` atomically (write, then rename)
at most once per ``MIN_INTERVAL`` while something changed (once per second per
``SCRIPTS_PER_SECOND`` scripts with thousands of them: the file is rewritten whole), and at
start and stop. Compact JSON, each string value redacted on its own (remembered: names and
reasons repeat), so a write of 2,000 scripts costs milliseconds, not a tenth of a second.
Monotonic times are turned into "seconds from now" at write time, with the write time
itself in wall-clock seconds (``written_at``), so a reader can age the figures.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pandaserver.config.secrets import redact
from pandaserver.daemons import logsink

if TYPE_CHECKING:
    from pandaserver.daemons.core import MasterCore as Master

log = logging.getLogger("panda.master")

MIN_INTERVAL = 1.0
SCRIPTS_PER_SECOND = 500
_REDACTED: dict[str, str] = {}


def _clean(value: Any) -> Any:
    """``value`` with every string redacted (the text as a whole is never scanned)."""
    if isinstance(value, str):
        found = _REDACTED.get(value)
        if found is None:
            found = redact(value)
            if len(_REDACTED) < 100_000:
                _REDACTED[value] = found
        return found
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def status_path(state_dir: Path, server: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in server)
    return state_dir / f"status-{safe}.json"


def snapshot(master: Master, now: float) -> dict[str, Any]:
    workers = []
    for slot in sorted(master.slots.values(), key=lambda s: s.index):
        run = slot.run
        workers.append({
            "index": slot.index, "pid": slot.pid, "state": slot.state.value,
            "age": round(now - slot.born, 3), "lifetime_left": round(slot.expires - now, 3),
            "script": run.script if run else None, "run": run.id if run else None,
            "running_for": round(now - run.dispatched, 3) if run else None,
        })
    scripts = []
    paused = getattr(master, "paused", {})
    looping = master.crashes.looping()
    contention = getattr(master, "contention", None)
    for name, state in sorted(master.scripts.items()):
        last = master.last_outcomes.get(name)
        hold = paused.get(name)
        crash = master.crashes.scripts.get(name)
        scripts.append({
            "name": name, "period": state.spec.period, "timeout": state.spec.timeout,
            "sync": state.spec.sync, "loop": state.spec.loop,
            "running": state.running is not None,
            "next_due_in": None if state.running is not None else round(state.next_due - now, 3),
            "disabled": state.disabled,
            "last_outcome": last[0] if last else None,
            "last_ended_ago": round(now - last[1], 3) if last else None,
            "paused": hold is not None,
            "paused_by": hold.requested_by if hold is not None else None,
            "paused_reason": hold.reason if hold is not None else None,
            "crash_looping": name in looping or name in master.unimportable,
            "crashes": crash.failures if crash is not None else 0,
            "backoff_left": round(crash.until - now, 3)
            if crash is not None and crash.until > now else None,
            # refused lease attempts here since the start (sync scripts; None: none)
            "contention": contention.report(name, now) if contention is not None else None,
        })
    return {
        "server": master.server, "pid": os.getpid(), "written_at": time.time(),
        "started_ago": round(now - master.started, 3), "stopping": master.stopping,
        "n_proc": master.n_proc, "workers": workers, "scripts": scripts,
        "draining": getattr(master, "drain_hold", None) is not None,
        "database": None if master.fleet is None else {
            "available": master.fleet.down_since is None,
            "down_for": None if master.fleet.down_since is None
            else round(now - master.fleet.down_since, 3),
            "outages": master.fleet.outages,
            "pending_history": master.fleet.keeper.waiting,
        },
        "logging": log_health(),
    }


def log_health() -> dict[str, Any]:
    """Log lines dropped because they could not be written (a full disk): the master's
    own and its workers', since the start, and the error while it lasts (None: writing)."""
    own, workers = logsink.MASTER, logsink.WORKERS
    return {"dropped": own.dropped + workers.dropped, "master_dropped": own.dropped,
            "workers_dropped": workers.dropped, "failing": own.error or workers.error}


def signature(master: Master) -> tuple[Any, ...]:
    """What changes the file's meaning (not the mere passing of time)."""
    return (
        master.stopping,
        tuple((s.index, s.pid, s.state, s.run.id if s.run else None)
              for s in master.slots.values()),
        master.scripts.version,  # bumped by any change of a script's state: O(1), not O(n)
        None if master.fleet is None else master.fleet.down_since,
        tuple(sorted(getattr(master, "paused", {}))), getattr(master, "drain_hold", None),
        tuple((n, c.failures) for n, c in sorted(master.crashes.scripts.items())),
        logsink.MASTER.dropped, logsink.MASTER.failing, logsink.WORKERS.dropped,
        bool(logsink.WORKERS.failing),
        getattr(getattr(master, "contention", None), "total", 0),
    )


class StatusFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_write = 0.0
        self._failed = False
        self._written: tuple[Any, ...] | None = None

    def tick(self, master: Master, now: float, force: bool = False) -> float | None:
        """Write when something changed (at most once per ``MIN_INTERVAL``); return when to
        be called again (None: nothing pending, so an idle master sleeps)."""
        current = signature(master)
        if not force:
            if current == self._written:
                return None
            if now < self.next_write:
                return self.next_write
        self._write(snapshot(master, now))
        self._written = current
        self.next_write = now + MIN_INTERVAL * max(1.0, len(master.scripts) / SCRIPTS_PER_SECOND)
        return None

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(_clean(data), separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, self.path)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the status file %s: %s", self.path, exc)
            self._failed = True


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

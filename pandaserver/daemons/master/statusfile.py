"""The local master's state as a JSON file, for ``panda-daemon status`` and the web pages.

The master rewrites ``<state dir>/status-<server>.json`` atomically (write, then rename)
at most once per ``MIN_INTERVAL`` while something changed (once per second per
``SCRIPTS_PER_SECOND`` scripts with thousands of them: the file is rewritten whole), and at
start and stop. Monotonic times are turned into "seconds from the capture", with the
capture's moment itself in wall-clock seconds (``written_at``), so a reader can age them.

The loop only *captures* the state (``capture``: a tuple of immutable values per script,
copied at C speed: well under a millisecond for 2,000 scripts); a ``StatusWriter`` thread
turns the capture into the document (``render``), redacts each string value on its own
(remembered: names and reasons repeat), serialises it and writes it. The two share nothing
mutable: a capture is handed over whole, the newest replacing one not yet taken; one thread
writes, so never two writes at once; a stop hands over the last state and waits (bounded)
for it to be written.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pandaserver.config.secrets import redact
from pandaserver.daemons.base import logsink
from pandaserver.daemons.fleet.contention import Contention
from pandaserver.daemons.master.firingnotes import Remembered, merge, notes_path, read_notes

if TYPE_CHECKING:  # ``status`` reads the file through this module: no database layer here
    from pandaserver.daemons.fleet.fleetdb import FleetDb
    from pandaserver.daemons.master.controls import Controls
    from pandaserver.daemons.master.dispatch import Dispatcher
    from pandaserver.daemons.master.workers import WorkerPool

log = logging.getLogger("panda.master")

MIN_INTERVAL = 1.0
SCRIPTS_PER_SECOND = 500
CHUNK = 100  # scripts serialised per call (a call holds the interpreter: ~0.1 ms)
CLOSE_TIMEOUT = 5.0  # a stop waits this long at most for the last write (a hung disk)
_SCRIPT_FIELDS = attrgetter("spec", "running", "next_due", "disabled", "firing")
_CONTENTION_FIELDS = attrgetter("refused", "held", "holder", "holder_at", "last_at")


class Master(Protocol):
    """What the status file reads of the master: its collaborators, read only."""

    @property
    def server(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def fleet(self) -> FleetDb | None: ...

    @property
    def pool(self) -> WorkerPool: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def controls(self) -> Controls: ...


class Capture(NamedTuple):
    """The master's state at one moment, as immutable values (monotonic times absolute)."""

    now: float
    wall: float
    head: tuple[Any, ...]  # server, pid, started, stopping, n_proc, draining
    workers: tuple[tuple[Any, ...], ...]
    scripts: list[tuple[str, tuple[Any, ...]]]  # name, (spec, running, next_due, disabled)
    last_outcomes: dict[str, tuple[str, float]]
    paused: dict[str, Any]  # name -> Hold (frozen)
    crashes: dict[str, tuple[int, float]]  # name -> (failures, until)
    contention: dict[str, tuple[Any, ...]]  # name -> a Contention's fields (sync scripts)
    looping: frozenset[str]
    database: tuple[float | None, int, int] | None  # down_since, outages, pending history
    logging: dict[str, Any]


def capture(master: Master, now: float) -> Capture:
    """What the loop does per write: copies, no formatting (``render`` does that)."""
    pool, dispatcher, controls = master.pool, master.dispatcher, master.controls
    workers = tuple((s.index, s.pid, s.state.value, s.born, s.expires,
                     *((s.run.script, s.run.id, s.run.dispatched) if s.run else (None,) * 3))
                    for s in pool.slots.values())
    states = dispatcher.scripts.states()
    fleet = master.fleet
    refused = dispatcher.refusals.contention.scripts
    contention = dict(zip(refused.keys(), map(_CONTENTION_FIELDS, refused.values()),
                          strict=True))
    crashes = controls.crashes
    return Capture(
        now=now, wall=time.time(),
        head=(master.server, os.getpid(), master.started, pool.stopping, pool.n_proc,
              controls.drain_hold is not None),
        workers=workers,
        scripts=list(zip(states.keys(), map(_SCRIPT_FIELDS, states.values()), strict=True)),
        last_outcomes=dict(dispatcher.last_outcomes),
        paused=dict(controls.paused),
        crashes={n: (c.failures, c.until) for n, c in crashes.scripts.items()},
        contention=contention,
        looping=frozenset(crashes.looping()) | frozenset(dispatcher.unimportable),
        database=None if fleet is None
        else (fleet.down_since, fleet.outages, fleet.keeper.waiting),
        logging=log_health(),
    )


def render(cap: Capture) -> dict[str, Any]:
    """The status document of a capture (off the loop: builds a dict per script)."""
    now = cap.now
    workers = [{
        "index": index, "pid": pid, "state": state, "age": round(now - born, 3),
        "lifetime_left": round(expires - now, 3), "script": script, "run": run,
        "running_for": round(now - dispatched, 3) if run is not None else None,
    } for index, pid, state, born, expires, script, run, dispatched in sorted(cap.workers)]
    scripts = []
    for name, (spec, running, next_due, disabled, firing) in sorted(cap.scripts):
        last = cap.last_outcomes.get(name)
        hold = cap.paused.get(name)
        crash = cap.crashes.get(name)
        refused = cap.contention.get(name)
        scripts.append({
            "name": name, "period": spec.period, "timeout": spec.timeout,
            "sync": spec.sync, "loop": spec.loop, "running": running is not None,
            "next_due_in": None if running is not None else round(next_due - now, 3),
            "disabled": disabled,
            "last_outcome": last[0] if last else None,
            "last_ended_ago": round(now - last[1], 3) if last else None,
            "paused": hold is not None,
            "paused_by": hold.requested_by if hold is not None else None,
            "paused_reason": hold.reason if hold is not None else None,
            "crash_looping": name in cap.looping,
            "crashes": crash[0] if crash is not None else 0,
            "backoff_left": round(crash[1] - now, 3)
            if crash is not None and crash[1] > now else None,
            # refused lease attempts here since the start (sync scripts; None: none)
            "contention": Contention(*refused).report(now) if refused is not None else None,
            # a cron script: its schedule and the firing it waits for (POSIX seconds, UTC)
            **({"cron": spec.cron.expression, "timezone": spec.cron.zone,
                "next_firing": firing} if spec.cron is not None else {}),
        })
    server, pid, started, stopping, n_proc, draining = cap.head
    db = cap.database
    return {
        "server": server, "pid": pid, "written_at": cap.wall,
        "started_ago": round(now - started, 3), "stopping": stopping,
        "n_proc": n_proc, "workers": workers, "scripts": scripts, "draining": draining,
        "database": None if db is None else {
            "available": db[0] is None,
            "down_for": None if db[0] is None else round(now - db[0], 3),
            "outages": db[1], "pending_history": db[2],
        },
        "logging": cap.logging,
    }


def snapshot(master: Master, now: float) -> dict[str, Any]:
    """The status document of the master as it is (``render(capture(...))``)."""
    return render(capture(master, now))


def status_path(state_dir: Path, server: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in server)
    return state_dir / f"status-{safe}.json"


def log_health() -> dict[str, Any]:
    """Log lines dropped because they could not be written (a full disk): the master's
    own and its workers', since the start, and the error while it lasts (None: writing)."""
    own, workers = logsink.MASTER, logsink.WORKERS
    return {"dropped": own.dropped + workers.dropped, "master_dropped": own.dropped,
            "workers_dropped": workers.dropped, "failing": own.error or workers.error}


def signature(master: Master) -> tuple[Any, ...]:
    """What changes the file's meaning (not the mere passing of time)."""
    pool, dispatcher, controls = master.pool, master.dispatcher, master.controls
    return (
        pool.stopping,
        tuple((s.index, s.pid, s.state, s.run.id if s.run else None)
              for s in pool.slots.values()),
        dispatcher.scripts.version,  # bumped by any change of a script's state: O(1), not O(n)
        None if master.fleet is None else master.fleet.down_since,
        tuple(sorted(controls.paused)), controls.drain_hold,
        tuple((n, c.failures) for n, c in sorted(controls.crashes.scripts.items())),
        logsink.MASTER.dropped, logsink.MASTER.failing, logsink.WORKERS.dropped,
        bool(logsink.WORKERS.failing),
        dispatcher.refusals.contention.total,
    )


class StatusFile:
    """The loop's side: decides when to write and captures the state; ``writer`` writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_write = 0.0
        self._written: tuple[Any, ...] | None = None
        self.writer = StatusWriter(path)

    def tick(self, master: Master, now: float, force: bool = False) -> float | None:
        """Hand a capture to the writer when something changed (at most once per
        ``MIN_INTERVAL``); return when to be called again (None: nothing pending, so an
        idle master sleeps)."""
        current = signature(master)
        if not force:
            if current == self._written:
                return None
            if now < self.next_write:
                return self.next_write
        self.writer.submit(capture(master, now))
        self._written = current
        self.next_write = now + MIN_INTERVAL * max(
            1.0, len(master.dispatcher.scripts) / SCRIPTS_PER_SECOND)
        return None

    def close(self, master: Master, now: float, timeout: float = CLOSE_TIMEOUT) -> None:
        """At stop: write the last state, waiting ``timeout`` seconds at most."""
        self.tick(master, now, force=True)
        self.writer.close(timeout)


class StatusWriter:
    """One thread that renders, redacts, serialises and writes captures, one at a time
    (the newest: a capture not yet taken is replaced by a newer one). Started on the
    first ``submit``; everything but the hand-over slot is the thread's own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0  # files written (read by tests once the thread is joined)
        self._cond = threading.Condition()
        self._pending: Capture | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._failed = False
        self._redacted: dict[str, str] = {}

    def submit(self, cap: Capture) -> None:
        with self._cond:
            self._pending = cap
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="status-file",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, timeout: float) -> None:
        """Write what is pending, then end the thread (waiting ``timeout`` s at most)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the status file %s was not written within %gs of the stop",
                            self.path, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                cap, self._pending = self._pending, None
            if cap is None:
                return
            self._write(cap)

    def _clean(self, value: Any) -> Any:
        """``value`` with every string redacted (the text as a whole is never scanned)."""
        if isinstance(value, str):
            found = self._redacted.get(value)
            if found is None:
                found = redact(value)
                if len(self._redacted) < 100_000:
                    self._redacted[value] = found
            return found
        if isinstance(value, dict):
            return {k: self._clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._clean(v) for v in value]
        return value

    def _write(self, cap: Capture) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(self._serialise(render(cap)), encoding="utf-8")
            os.replace(tmp, self.path)
            self.writes += 1
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot write the status file %s: %s", self.path, exc)
            self._failed = True

    def _serialise(self, doc: dict[str, Any]) -> str:
        """Compact JSON, the scripts ``CHUNK`` at a time: no single call holds the
        interpreter (and so the loop's thread) for the length of the whole file."""
        scripts = self._clean(doc["scripts"])
        rows = ",".join(_dumps(scripts[i:i + CHUNK])[1:-1]
                        for i in range(0, len(scripts), CHUNK))
        rest = _dumps(self._clean({k: v for k, v in doc.items() if k != "scripts"}))
        return f'{rest[:-1]},"scripts":[{rows}]}}'


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def remembered_firings(path: Path) -> dict[str, tuple[str, str, float]]:
    """What a previous master on this host said its cron scripts waited for (name ->
    expression, zone, next firing): a firing it waited for that has passed since was
    missed while no master ran (it is run once, late: ``Timetable``)."""
    found = {}
    for s in (read_status(path) or {}).get("scripts", []):
        if isinstance(s, dict) and isinstance(s.get("cron"), str) \
                and isinstance(s.get("next_firing"), int | float):
            found[str(s.get("name"))] = (s["cron"], str(s.get("timezone") or "UTC"),
                                         float(s["next_firing"]))
    return found


def remembered(path: Path) -> Remembered:
    """What the previous master on this host waited for: its status file, moved forward by
    its firing notes (``firingnotes.py``)."""
    return merge(remembered_firings(path), read_notes(notes_path(path)))


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

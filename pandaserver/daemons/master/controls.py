"""The master's side of the operators' commands, and its crash-loop back-off.

The master reads the shared database on its ``house`` lane, never on its loop
(``ControlStore.poll``): it writes when it acted on the commands seen at the last read,
reports its state (draining, crash-looping scripts) and reads the pauses and drains in
force and the new commands meant for it. It reads:

- at once when PostgreSQL notifies it (a command was recorded) or its listening connection
  is new (a notification may have been lost meanwhile): ``ControlLink.woken``;
- at once when it has something to say: the acknowledgements of what it just did, a change
  of its reported state;
- else every ``command_interval`` seconds (``DaemonSettings.command_check``: 60 s beside
  PostgreSQL's notifications, a safety net; 30 s where the read is the only way, MySQL/MariaDB
  and SQLite), early by up to the timer slack when the loop is awake anyway (a heartbeat).

The answer is applied on the loop thread:

- pause / resume: the set of paused scripts is the database's (``daemon_hold``); a paused
  script is not started here, a run in progress finishes;
- run-now: taken by one server (a conditional update); the script is due at once,
  bypassing a pause and a back-off, and its period counts from this run;
- kill: the script's run here is killed (its tree, politely then SIGKILL) and recorded as
  ``killed`` with the operator's reason;
- drain / undrain: no new sync lease is asked for here while draining;
- restart-workers: every worker is recycled, one at a time (a busy one after its run).

``Controls`` owns that operator state (pauses, the drain, pending run-nows, crash records)
and is the dispatcher's ``Gate``. It reaches the database through a ``ControlLink``
(``FleetControl``: the fleet's ``house`` lane), the scripts through the dispatcher's
``Scripts`` side and the workers through the pool's ``Workers`` side.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base.clock import Clock, slack_due
from pandaserver.daemons.master import crashloop
from pandaserver.daemons.master.schedule import ScriptState

if TYPE_CHECKING:  # the database layer is imported when the link is made (SQLAlchemy)
    from pandaserver.daemons.fleet.fleetdb import FleetDb
    from pandaserver.db.stores import operator_commands as dbcontrol

log = logging.getLogger("panda.master")

# (result, error, late): as the fleet's lanes call back, on the loop thread
Done = Callable[[Any, BaseException | None, bool], None]


class ControlLink(Protocol):
    """The operator-command rows, asked beside the loop; answers come back through ``done``."""

    def ready(self, now: float) -> bool:
        """Whether a poll may be sent now (the database is up, its lane free)."""

    @property
    def pushed(self) -> bool:
        """Whether the database notifies this master of new commands."""

    def woken(self) -> bool:
        """Whether the commands should be read now (a notification since the last call)."""

    def poll(self, server: str, pid: int, after: int | None, acks: list[tuple[int, str]],
             state: dict[str, Any] | None, done: Done) -> None:
        """Write ``acks`` and ``state`` (None: unchanged), read holds and commands."""

    def claim(self, command_id: int, server: str, lease: str | None, done: Done) -> None: ...


class FleetControl:
    """The link over the fleet database's ``house`` lane."""

    def __init__(self, fleet: FleetDb) -> None:
        from pandaserver.db.stores.operator_commands import ControlStore

        self.fleet = fleet
        self.store = ControlStore(fleet.engine)

    def ready(self, now: float) -> bool:
        return self.fleet.usable(now) and not self.fleet.lanes["house"].busy

    @property
    def pushed(self) -> bool:
        return self.fleet.listener is not None

    def woken(self) -> bool:
        return self.fleet.listener is not None and self.fleet.listener.take_wake()

    def poll(self, server: str, pid: int, after: int | None, acks: list[tuple[int, str]],
             state: dict[str, Any] | None, done: Done) -> None:
        from pandaserver.daemons.fleet.lanes import Chore

        store = self.store
        # sent by the fleet's tick of this turn, with its heartbeat when that is due
        self.fleet.chores.append(Chore("operator commands",
                                       lambda: store.poll(server, pid, after, acks, state), done))

    def claim(self, command_id: int, server: str, lease: str | None, done: Done) -> None:
        store = self.store
        self.fleet._submit("house", "run-now claim",
                           lambda: store.claim(command_id, server, lease), done)


class Scripts(Protocol):
    """What the controls ask of the dispatcher."""

    def script(self, name: str) -> ScriptState | None: ...

    def run_now(self, name: str, now: float) -> bool: ...

    def release_finished(self, name: str) -> None: ...

    def retry_import(self, name: str) -> None: ...


class Workers(Protocol):
    """What the controls ask of the worker pool."""

    def kill_runs_of(self, name: str, killed_by: str, now: float) -> list[str]: ...

    def recycle_all(self) -> int: ...


def _who(hold: dbcontrol.Hold | dbcontrol.Command) -> str:
    reason = f" ({hold.reason})" if hold.reason else ""
    return f"{hold.requested_by}{reason}"


class Controls:
    def __init__(self, *, clock: Clock, settings: Callable[[], DaemonSettings], server: str,
                 link: ControlLink | None, crash_backoff_max: float) -> None:
        self.clock = clock
        self.settings = settings
        self.server = server
        self.link = link  # None: no database (or run-once): nothing to poll
        self.scripts: Scripts | None = None
        self.workers: Workers | None = None
        self.paused: dict[str, dbcontrol.Hold] = {}
        self.drain_hold: dbcontrol.Hold | None = None
        self.run_now: set[str] = set()
        self.crashes = crashloop.CrashLoops(crash_backoff_max)
        self.control_after: int | None = None
        self.control_acks: list[tuple[int, str]] = []
        self.next_poll = 0.0
        self.polling = False
        self.read_soon = False  # something to say, or a notification: read at once
        self.reported: dict[str, Any] | None = None  # the state last sent
        self.stored: dict[str, Any] | None = None  # the state the database has

    def connect(self, scripts: Scripts, workers: Workers) -> None:
        self.scripts = scripts
        self.workers = workers

    def _parts(self) -> tuple[Scripts, Workers]:
        if self.scripts is None or self.workers is None:
            raise RuntimeError("the operator controls were not connected to the master")
        return self.scripts, self.workers

    # ----- the dispatcher's gate -------------------------------------------------------------
    def may_start(self, state: ScriptState, now: float) -> bool:
        """The one check of the due loop: paused, draining (sync scripts), backed off."""
        name = state.spec.name
        if name in self.run_now:
            return True
        if name in self.paused or self.crashes.blocked(name, now):
            return False
        return not (state.spec.sync and self.drain_hold is not None)

    def asked_now(self, name: str) -> bool:
        return name in self.run_now

    def dispatched(self, name: str) -> None:
        self.run_now.discard(name)

    def note_outcome(self, name: str, crashed: str | None, now: float) -> None:
        """After every run: ``crashed`` says why it was a crash (None: a clean run)."""
        if crashed is None:
            before = self.crashes.clean(name)
            if before is not None and before.looping:
                log.info("script %s ran cleanly: no longer crash-looping", name)
            return
        record = self.crashes.crashed(name, now, crashed)
        log.error("script %s crashed (%d in a row: %s); next attempt in %.1f s%s", name,
                  record.failures, crashed, record.until - now,
                  "; it is crash-looping" if record.looping else "")

    # ----- the poll ------------------------------------------------------------------------
    @property
    def interval(self) -> float:
        """Seconds between two reads when nothing asks for one sooner."""
        return self.settings().command_check(self.link is not None and self.link.pushed)

    def tick(self, now: float) -> float | None:
        """Read when due; returns when to be called again (a back-off ending included):
        the next read or back-off end, never a shorter tick."""
        until = self.crashes.next_event(now)
        if self.link is None:
            return until
        link = self.link
        report = self._report()
        if link.woken() or report != self.reported:
            self.read_soon = True
        interval = self.interval
        due = self.read_soon or slack_due(now, self.next_poll, interval)
        if due and not self.polling and link.ready(now):
            self.polling = True
            self.read_soon = False
            self.reported = report
            self.next_poll = now + interval
            acks, self.control_acks = self.control_acks, []
            state = report if report != self.stored else None  # written when it changed

            def done(result: Any, error: BaseException | None, late: bool) -> None:
                self.polling = False
                if error is not None or result is None:
                    self.control_acks = acks + self.control_acks  # written at the next poll
                    return
                if state is not None:
                    self.stored = state
                self.apply_poll(result, self.clock.monotonic())

            link.poll(self.server, os.getpid(), self.control_after, acks, state, done)
        # a read wanted soon but not sent (the lane is busy, the database down) waits for the
        # lane's answer or the outage's probe, which wake the loop anyway: its due time,
        # past, is no wake-up (the loop turned without pause for the whole outage)
        waiting = self.polling or self.read_soon or now >= self.next_poll
        poll = math.inf if waiting else self.next_poll
        return poll if until is None else min(until, poll)

    def _report(self) -> dict[str, Any]:
        return {"draining": self.drain_hold is not None, "paused": sorted(self.paused),
                "crash_looping": self.crashes.looping()}

    def apply_poll(self, result: dbcontrol.PollResult, now: float) -> None:
        from pandaserver.db.stores import operator_commands as dbcontrol  # loaded by the poll

        scripts, _ = self._parts()
        paused = {h.name: h for h in result.holds if h.kind == dbcontrol.PAUSE}
        for name in sorted(set(paused) - set(self.paused)):
            if scripts.script(name) is not None:
                log.info("script %s paused by %s", name, _who(paused[name]))
        for name in sorted(set(self.paused) - set(paused)):
            if scripts.script(name) is not None:
                log.info("script %s resumed", name)
        self.paused = paused
        drain = next((h for h in result.holds if h.kind == dbcontrol.DRAIN), None)
        if (drain is None) != (self.drain_hold is None):
            log.info("%s", f"draining, asked by {_who(drain)}: no new sync lease is taken here"
                     if drain is not None else "no longer draining: sync scripts run here again")
        self.drain_hold = drain
        self.control_after = result.last_id
        for command in result.commands:
            try:
                self._act(command, now)
            except Exception:  # a bad row must never end the master's loop
                log.exception("operator command %d (%s) failed", command.id, command.verb)
                self.control_acks.append((command.id, "failed: see the master's log"))
        if self.control_acks:  # said at once, not at the next read
            self.read_soon = True

    def _act(self, command: dbcontrol.Command, now: float) -> None:
        from pandaserver.db.stores import operator_commands as dbcontrol  # loaded by the poll

        scripts, workers = self._parts()
        verb, name = command.verb, command.target
        state = scripts.script(name)
        ack = self.control_acks.append
        if verb in (dbcontrol.PAUSE, dbcontrol.RESUME):
            if state is None:
                ack((command.id, f"no script {name} here"))
                return
            if verb == dbcontrol.RESUME and self.crashes.clean(name) is not None:
                log.info("script %s resumed by %s: its crash back-off is reset", name,
                         _who(command))
                scripts.retry_import(name)  # tried again: the run imports it
            ack((command.id, "paused" if name in self.paused else "running"))
        elif verb in (dbcontrol.DRAIN, dbcontrol.UNDRAIN):
            ack((command.id, "draining" if self.drain_hold is not None else "not draining"))
        elif verb == dbcontrol.KILL:
            killed = workers.kill_runs_of(name, f"killed by {_who(command)}", now)
            ack((command.id, f"killed {', '.join(killed)}" if killed
                 else f"{name} not running here"))
        elif verb == dbcontrol.RESTART_WORKERS:
            count = workers.recycle_all()
            log.info("restart-workers asked by %s: recycling %d worker(s), one at a time",
                     _who(command), count)
            ack((command.id, f"recycling {count} worker(s)"))
        elif verb == dbcontrol.RUN_NOW:
            self._run_now(command, state)

    def _run_now(self, command: dbcontrol.Command, state: ScriptState | None) -> None:
        name = command.target
        why = ("not configured here" if state is None else
               f"not runnable here: {state.disabled}" if state.disabled is not None else
               "draining" if state.spec.sync and self.drain_hold is not None else None)
        if why is not None or self.link is None:
            self.control_acks.append((command.id, f"not taken: {name} {why}"))
            return
        server = self.server
        lease = name if state is not None and state.spec.sync else None
        if lease is not None:  # whoever takes it, this master's deferred release must not
            self._parts()[0].release_finished(name)  # hold that server back

        def done(holder: Any, error: BaseException | None, late: bool) -> None:
            self.read_soon = True  # the acknowledgement below is written at once
            if error is not None or late:
                self.control_acks.append((command.id, "not taken: the database failed"))
                return
            scripts, _ = self._parts()
            if holder == server and scripts.script(name) is not None:
                self.run_now.add(name)
                scripts.run_now(name, self.clock.monotonic())
                log.info("script %s: one extra run now, asked by %s", name, _who(command))
                self.control_acks.append((command.id, "taken: runs as soon as a worker is free"))
            else:
                self.control_acks.append((command.id, f"taken by {holder}"))

        self.link.claim(command.id, server, lease, done)

"""Fakes for the layers under the master, so its decisions run in-process in milliseconds:
a clock moved by hand, a process layer with no processes (workers are in-process pipe
ends), a run containment that finds nothing left, leases answered by the test, a recorder
that keeps what it is given and an operator-command link the test feeds.

``Rig`` builds a real ``Master`` on them and drives its loop one ``turn`` at a time; the
workers' side of the protocol goes through real pipes (``send`` / ``sent``)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any, cast

from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.base import protocol
from pandaserver.daemons.base.lifeline import RECORD
from pandaserver.daemons.base.runs import Run, RunRecord
from pandaserver.daemons.containment.processes import PendingKill, Spawned
from pandaserver.daemons.fleet.leasemanager import (
    AcquireReply,
    LeaseDecision,
    RenewReply,
    Turn,
)
from pandaserver.daemons.master.controls import Done
from pandaserver.daemons.master.loop import Master
from pandaserver.daemons.master.pool import Slot
from pandaserver.db.stores.operator_commands import Command, Hold, PollResult

FIRST_PID = 10_000_000  # above any pid_max: never a real process


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.step = 0.0  # seconds the wall clock was stepped by (NTP), monotonic unmoved
        self.creep = 0.0  # seconds each reading moves the clock on (time a turn takes)

    def monotonic(self) -> float:
        now = self.now
        self.now += self.creep
        return now

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now + self.step)


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self) -> int:
        assert self.returncode is not None, "reaped before it exited"
        return self.returncode


class FakeSpawned:
    """A worker without a process: the master's end of a real pipe, a real lifeline pipe."""

    def __init__(self, pid: int) -> None:
        self.popen = FakePopen(pid)
        self.conn, self.worker = Pipe()
        self.lifeline_r, self.lifeline = os.pipe()
        os.set_blocking(self.lifeline_r, False)
        self.pidfd = -1
        self.conn_fd = self.conn.fileno()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def close(self) -> None:
        self.conn.close()
        os.close(self.lifeline)

    def deadlines(self) -> list[float | None]:
        """The lease deadlines the master wrote on the lifeline since the last call."""
        try:
            data = os.read(self.lifeline_r, 4096)
        except BlockingIOError:
            return []
        return [None if value == float("inf") else value
                for (value,) in RECORD.iter_unpack(data)]


class FakeProcesses:
    def __init__(self) -> None:
        self.spawned: list[FakeSpawned] = []
        self.pids = itertools.count(FIRST_PID)
        self.calls: list[tuple[Any, ...]] = []
        self.alive: set[int] = set()  # pids a kill has not ended yet (the test ends them)
        self.fail_spawn = False

    def spawn(self, argv: list[str]) -> Spawned:
        if self.fail_spawn:
            raise OSError("no more processes")
        proc = FakeSpawned(next(self.pids))
        self.spawned.append(proc)
        return cast(Spawned, proc)

    def begin_kill(self, pid: int, now: float, grace: float, reason: str,
                   extra: Iterable[int]) -> PendingKill:
        self.calls.append(("term", pid, grace, reason))
        self.alive.add(pid)
        return PendingKill(procs=cast(Any, [pid]), deadline=now + grace, reason=reason,
                           killed=grace <= 0)

    def finish_kill(self, pending: PendingKill) -> None:
        self.calls.append(("kill", *cast(list[int], pending.procs)))
        pending.killed = True

    def any_alive(self, procs: list[Any]) -> bool:
        return any(pid in self.alive for pid in procs)


@dataclass
class FakeContainment:
    ended: list[tuple[int, float | None]] = field(default_factory=list)  # run id, deadline
    hurried: list[int] = field(default_factory=list)
    busy: bool = False

    def worker_started(self, index: int, pid: int) -> None: ...

    def worker_gone(self, pid: int) -> None: ...

    def run_processes(self, run: Run, known: set[int] | None = None) -> list[Any]:
        return []

    def end_run(self, run: Run, then: Callable[[], None], deadline: float | None = None) -> None:
        self.ended.append((run.id, deadline))
        then()  # nothing was left behind

    def hurry(self, run_id: int) -> None:
        self.hurried.append(run_id)

    def tick(self, now: float) -> float | None:
        return None

    def reap(self) -> None: ...

    def start(self) -> None: ...

    def close(self) -> None: ...


class FakeLeases:
    """Sync leases answered by the test (``asked``), or at once when ``auto`` is set."""

    def __init__(self, ttl: float | None = 30.0) -> None:
        self.ttl = ttl
        self.epoch = 0  # bumped by a test: the database failed over
        self.turns: dict[str, Turn] = {}  # a script's answer to ``turn`` (default: ask)
        self.asked: list[tuple[str, float, AcquireReply]] = []
        self.firings: list[float | None] = []  # the firing each ask was for (cron scripts)
        self.renewals: list[tuple[list[tuple[str, int]], float, RenewReply]] = []
        self.released: list[tuple[str, int | None]] = []
        self.run_ids: list[int | None] = []  # the run each ask was for
        self.not_run_rows: list[tuple[str, int, int]] = []  # granted rows of runs not run
        self.generation = itertools.count(1)

    def turn(self, spec: DaemonSpec, due: float, now: float) -> Turn:
        return self.turns.get(spec.name, Turn(ask=True, due=due))

    def acquire(self, spec: DaemonSpec, now: float, reply: AcquireReply,
                firing: float | None = None, run_id: int | None = None) -> None:
        self.asked.append((spec.name, now, reply))
        self.firings.append(firing)
        self.run_ids.append(run_id)

    def grant(self, sent: float | None = None, run_row: bool = False) -> int:
        _, asked_at, reply = self.asked.pop(0)
        generation = next(self.generation)
        reply(LeaseDecision(granted=True, generation=generation,
                            sent=asked_at if sent is None else sent, run_row=run_row))
        return generation

    def refuse(self, holder: str | None = "other", wait: float = 5.0) -> None:
        _, _, reply = self.asked.pop(0)
        reply(LeaseDecision(granted=False, holder=holder, wait=wait))

    def renew(self, held: list[tuple[str, int]], now: float, reply: RenewReply) -> None:
        self.renewals.append((held, now, reply))

    def release(self, name: str, generation: int | None) -> None:
        self.released.append((name, generation))

    def not_run(self, name: str, generation: int, run_id: int) -> None:
        self.not_run_rows.append((name, generation, run_id))

    def next_release(self) -> float | None:
        return None

    def send_releases(self, now: float, everything: bool = False,
                      only: str | None = None) -> None:
        return None


class Records:
    def __init__(self) -> None:
        self.started: list[Run] = []
        self.records: list[RunRecord] = []

    def start(self, run: Run) -> None:
        self.started.append(run)

    def record(self, record: RunRecord) -> None:
        self.records.append(record)

    def outcomes(self) -> list[tuple[str, str]]:
        return [(r.script, r.outcome) for r in self.records]


class FakeLink:
    """The operator-command rows: polls and claims are kept for the test to answer."""

    def __init__(self, pushed: bool = False) -> None:
        self.polls: list[tuple[list[tuple[int, str]], dict[str, Any] | None, Done]] = []
        self.claims: list[tuple[int, str | None, Done]] = []
        self.ids = itertools.count(1)
        self.pushed = pushed  # as PostgreSQL's LISTEN/NOTIFY: ``notify`` wakes the master
        self.notified = False
        self.down = False  # the database is down (or its lane busy): no poll can be sent

    def ready(self, now: float) -> bool:
        return not self.down

    def notify(self) -> None:
        """A command was recorded (PostgreSQL's notification, or a new listening connection)."""
        self.notified = True

    def woken(self) -> bool:
        notified, self.notified = self.notified, False
        return notified

    def poll(self, server: str, pid: int, after: int | None, acks: list[tuple[int, str]],
             state: dict[str, Any] | None, done: Done) -> None:
        self.polls.append((acks, state, done))

    def claim(self, command_id: int, server: str, lease: str | None, done: Done) -> None:
        self.claims.append((command_id, lease, done))

    def answer(self, holds: Iterable[Hold] = (), commands: Iterable[Command] = ()) -> None:
        _, _, done = self.polls.pop(0)
        done(PollResult(holds=list(holds), commands=list(commands), last_id=0), None, False)

    def command(self, verb: str, target: str) -> Command:
        return Command(id=next(self.ids), verb=verb, target=target, server=None, reason="test",
                       requested_by="ops", requested_at=datetime.now(UTC))

    def hold(self, kind: str, name: str) -> Hold:
        return Hold(kind=kind, name=name, server="*", command_id=0, requested_by="ops",
                    reason="test", since=datetime.now(UTC))


def spec(name: str, period: float = 60.0, timeout: float | None = None, sync: bool = False,
         module: str | None = None) -> DaemonSpec:
    return DaemonSpec(name=name, module=module or name, period=period,
                      timeout=timeout if timeout is not None else period * 2, sync=sync)


class Rig:
    """A real master on the fakes above, its loop turned by hand."""

    def __init__(self, specs: list[DaemonSpec], n_proc: int = 2, ttl: float | None = 30.0,
                 only: str | None = None, **settings: Any) -> None:
        self.settings = DaemonSettings(path="x.cfg", n_proc=n_proc,
                                       scripts={s.name: s for s in specs}, **settings)
        self.clock = FakeClock()
        self.processes = FakeProcesses()
        self.containment = FakeContainment()
        self.leases = FakeLeases(ttl)
        self.history = Records()
        self.link = FakeLink()
        self.master = Master(self.settings, server="here", clock=self.clock,
                             recorder=self.history, leases=self.leases, only=only,
                             processes=self.processes, containment=self.containment,
                             control=self.link)
        self.master.begin(self.clock.now)

    # ----- time and the loop ------------------------------------------------------------------
    def turn(self) -> float | None:
        """Turn the loop as its wait would: again at once while its next event is now."""
        for _ in range(100):
            wake = self.master.turn()
            if wake is None or wake > self.clock.now:
                return wake
        raise AssertionError(f"the loop spins at {self.clock.now}")

    def at(self, when: float) -> float | None:
        """Move the clock to ``when`` and turn the loop; when it wants to wake next."""
        assert when >= self.clock.now
        self.clock.now = when
        return self.turn()

    # ----- the workers' side ------------------------------------------------------------------
    def slot(self, index: int) -> Slot:
        return self.master.pool.slots[index]

    def proc(self, index: int) -> FakeSpawned:
        return cast(FakeSpawned, self.slot(index).proc)

    def send(self, index: int, op: str, **fields: Any) -> None:
        """The worker ``index`` sends a message; the master reads it as its loop would."""
        slot = self.slot(index)
        protocol.send(self.proc(index).worker, op, **fields)
        self.master.pool.read_messages(slot)

    def sent(self, index: int) -> list[dict[str, Any]]:
        """What the master sent worker ``index`` since the last call."""
        worker: Connection = self.proc(index).worker
        found = []
        while worker.poll():
            found.append(protocol.recv(worker))
        return found

    def start_workers(self) -> None:
        """Spawn the workers and have each report ready."""
        self.turn()
        self.ready()

    def ready(self) -> None:
        """Every starting worker reports ready (nothing failed to import)."""
        for index in sorted(self.master.pool.slots):
            if self.slot(index).state.value == "starting":
                self.send(index, "ready", import_errors={})

    def runs(self, index: int) -> list[dict[str, Any]]:
        return [m for m in self.sent(index) if m["op"] == "run"]

    def done(self, index: int, outcome: str = protocol.OK, error: str | None = None) -> None:
        run = self.slot(index).run
        assert run is not None, f"worker {index} has no run"
        self.send(index, "done", run=run.id, outcome=outcome, error=error,
                  started=self.clock.now, ended=self.clock.now)

    def exit(self, index: int, code: int) -> None:
        """Worker ``index``'s process ends with ``code`` (negative: killed by a signal)."""
        slot = self.slot(index)
        cast(FakeSpawned, slot.proc).popen.returncode = code
        self.processes.alive.discard(slot.pid)
        self.master.pool.worker_gone(slot, self.clock.now)

    def busy(self) -> dict[int, str]:
        return {i: s.run.script for i, s in self.master.pool.slots.items() if s.run is not None}

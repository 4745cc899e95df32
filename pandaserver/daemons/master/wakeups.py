"""What wakes the master's loop: its one wait, signals, and the configuration a SIGHUP
re-reads. The loop alone acts on what comes.

- ``LoopWait``: the one wait over the signal pipe, the database's completions, the
  PostgreSQL connection that listens for operator commands, worker pipes and worker pidfds,
  with a kept selector (descriptors registered once, not on every wake-up); what came is
  handed to its owner (the fleet, the worker pool) on the loop.
- ``SignalPipe``: the self-pipe the loop's wait watches. A handler only records its signal
  (the interpreter writes a byte to the pipe, ``signal.set_wakeup_fd``); the loop takes the
  recorded signals in order and acts.
- ``Rereader``: a SIGHUP's re-read and validation of the configuration, on a thread (it
  imports the script modules in a fresh interpreter: seconds, maybe). The result (settings,
  or the error) is queued and wakes the loop through the same pipe. One at a time: a SIGHUP
  meanwhile is served once that one is done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import signal
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.base.clock import Clock
from pandaserver.daemons.master.pool import Slot
from pandaserver.daemons.master.workers import WorkerPool

if TYPE_CHECKING:  # imported when the database side opens (SQLAlchemy)
    from pandaserver.daemons.fleet.fleetdb import FleetDb

log = logging.getLogger("panda.master")


class SignalPipe:
    """The signals recorded by their handlers, and the pipe that wakes the loop's wait."""

    def __init__(self) -> None:
        self.pending: list[int] = []  # recorded, not yet acted on by the loop
        self.read_fd = -1
        self.write_fd = -1
        self.installed: set[int] = set()

    def install(self, signums: Iterable[int]) -> None:
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self.read_fd = read_end
        self.write_fd = write_end
        signal.set_wakeup_fd(write_end)
        for signum in signums:
            signal.signal(signum, self.record)
            self.installed.add(signum)

    def ignore(self) -> None:
        """The loop is over: the signals it acted on are ignored from now on. Recorded, they
        would change nothing now; but the interpreter's exit gives a signal with a Python
        handler back its default action, and a SIGTERM then (a second stop, systemd's, an
        impatient operator's) or a logrotate's SIGUSR1 would end a master that has already
        stopped as killed by it, instead of with its own exit status."""
        for signum in self.installed:
            # ignoring SIGCHLD is not its default: children would be reaped by the kernel
            # and their exit statuses lost; its default (and the others') ends nothing
            harmless = signum in (signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH)
            signal.signal(signum, signal.SIG_DFL if harmless else signal.SIG_IGN)

    def record(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)

    def wake(self) -> None:
        """Wake the loop's wait from another thread (before ``install``: nothing to wake)."""
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"r")

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 512):
                pass
        except BlockingIOError:
            pass


class Rereader:
    """The configuration re-read on a thread; its result taken by the loop."""

    def __init__(self, read: Callable[[], DaemonSettings], wake: Callable[[], None]) -> None:
        self._read = read
        self._wake = wake
        self._thread: threading.Thread | None = None
        self._again = False
        self._results: queue.SimpleQueue[DaemonSettings | BaseException] = queue.SimpleQueue()

    def start(self) -> None:
        """Re-read now; while a re-read runs, once more after it (``again``)."""
        if self._thread is not None:
            self._again = True
            return
        read = self._read

        def run() -> None:
            try:
                result: DaemonSettings | BaseException = read()
            except BaseException as exc:
                result = exc
            self._results.put(result)
            self._wake()

        self._thread = threading.Thread(target=run, name="reload", daemon=True)
        self._thread.start()

    def take(self) -> DaemonSettings | BaseException | None:
        """The re-read's result, once it came back (None: nothing yet)."""
        try:
            new = self._results.get_nowait()
        except queue.Empty:
            return None
        self._thread = None
        return new

    def again(self) -> bool:
        """Whether a SIGHUP came while the re-read ran; asking resets it."""
        again, self._again = self._again, False
        return again


SPIN_TURNS = 1000  # turns in a row that end without a wait: the loop spins


class SpinWatch:
    """The loop's turns that end without a wait. A few in a row are normal (a run ended,
    the next is handed over at once); ``SPIN_TURNS`` in a row is a timer already past that
    nothing acts on, turning the loop without pause: CPU burnt, nothing done. The next turn
    then names each timer (``explain``) and they are logged, once per such spell."""

    def __init__(self) -> None:
        self.turns = 0
        self.explain: list[tuple[str, float]] | None = None

    def waited(self, timeout: float) -> None:
        if timeout > 0:
            self.turns = 0
            self.explain = None
            return
        self.turns += 1
        if self.turns == SPIN_TURNS:
            self.explain = []

    def report(self, now: float) -> None:
        """After a turn computed with ``explain``: say which timers were due."""
        named, self.explain = self.explain, None
        if named is None:
            return
        due = [f"{name} ({when - now:+.3f} s)" for name, when in named if when <= now]
        log.warning("the master's loop turned %d times in a row without waiting: a timer"
                    " already past that nothing acts on (a defect; please report it): %s",
                    self.turns, ", ".join(due) or "none named")


class LoopWait:
    """The loop's one wait; the worker pool and the fleet act on what it brings."""

    def __init__(self, signals: SignalPipe, pool: WorkerPool, clock: Clock) -> None:
        self.signals = signals
        self.pool = pool
        self.clock = clock
        self._selector = selectors.DefaultSelector()

    def watched(self, fleet: FleetDb | None) -> dict[int, tuple[str, Slot | None]]:
        fds: dict[int, tuple[str, Slot | None]] = {self.signals.read_fd: ("signal", None)}
        if fleet is not None:
            fds[fleet.fileno()] = ("db", None)
            listener = fleet.listener
            if listener is not None and (fd := listener.fileno()) is not None:
                # by generation: a new connection may reuse the descriptor's number
                fds[fd] = (f"notify {listener.generation}", None)
        for slot in self.pool.slots.values():
            fds[slot.proc.pidfd] = ("exit", slot)
            if slot.conn_open:
                fds[slot.proc.conn.fileno()] = ("message", slot)
        return fds

    def wait(self, timeout: float, fleet: FleetDb | None) -> None:
        """One wait over the signal pipe, worker pipes and worker pidfds (a kept selector:
        descriptors are registered once, not on every wake-up)."""
        wanted = self.watched(fleet)
        registered = self._selector.get_map()
        for fd in [fd for fd in registered if fd not in wanted]:
            self._selector.unregister(fd)
        for fd, data in wanted.items():
            key = registered.get(fd)
            if key is not None and key.data != data:
                # a descriptor number reused by a new worker: register it afresh (the
                # kernel dropped the old registration when the old descriptor was closed)
                self._selector.unregister(fd)
                key = None
            if key is None:
                self._selector.register(fd, selectors.EVENT_READ, data)
        if fleet is not None:  # the last thing before the wait (``defer_calls``)
            fleet.start_calls()
        events = self._selector.select(max(0.0, timeout))
        exits = []
        for key, _ in events:
            kind, slot = key.data
            if kind == "signal":
                self.signals.drain()
            elif kind == "db" and fleet is not None:
                fleet.collect()
            elif kind.startswith("notify") and fleet is not None:
                if fleet.listener is not None:  # the commands are read on this turn
                    fleet.listener.read(self.clock.monotonic())
            elif kind == "message" and slot is not None and slot.conn_open:
                self.pool.read_messages(slot)
            elif kind == "exit" and slot is not None:
                exits.append(slot)
        for slot in exits:  # after its last messages were read
            if self.pool.holds(slot):
                self.forget(slot)
                self.pool.worker_gone(slot, self.clock.monotonic())

    def forget(self, slot: Slot) -> None:
        for fd in (slot.proc.pidfd, slot.proc.conn_fd):  # before they close and get reused
            if fd in self._selector.get_map():
                self._selector.unregister(fd)

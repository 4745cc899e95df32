"""Database calls beside the master's loop: lanes of one thread each, bounded on our side.

The master never runs a database statement on its loop thread. It submits ``Op``s to a
``Lane``; the lane's thread runs them one at a time, in order, and posts each result to
``Completions``, whose pipe the loop's single wait watches. The result's callback then runs
*on the loop thread*, so all scheduling state keeps one owner.

Every op has a deadline on the loop's monotonic clock. A server that stops answering while
its kernel still acknowledges (a SIGSTOPped database, a hung proxy, a partition behind a
NAT) blocks the lane's thread inside the driver; no client timeout fires. So the loop
gives up on its own: when an op passes its deadline the loop ``abandon``s it, which shuts
the socket the thread is blocked on (the driver then fails at once and the connection is
discarded) and hands the lane's queue to a fresh thread. Should the old thread still come
back, its result is delivered with ``late=True`` so the caller can undo it (a late lease
grant is released). Nothing the loop does waits for a lane.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

from pandaserver.db.base.engine import socket_of

log = logging.getLogger("panda.master")


def name_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``top -H``, ``ps -L``,
    ``/proc/PID/task/TID/comm``, the idle benchmark's ``--threads``): cosmetic."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a dependency; names are cosmetic
        return
    setproctitle.setthreadtitle(name)


@dataclass(eq=False)
class Op:
    """One database call. ``run`` executes on a lane thread; ``done(result, error, late)``
    on the loop thread. ``started`` is the loop's clock when the lane took the op."""

    what: str
    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None, bool], None]
    timeout: float
    started: float | None = None
    deadline: float | None = None
    abandoned: bool = False
    result: Any = None
    error: BaseException | None = None


class Unavailable(Exception):
    """A call not made: the database is known to be down (an outage began meanwhile)."""


@dataclass(eq=False)
class Chore:
    """One of several calls sent as one op (``run_chores``): ``done`` as an ``Op``'s."""

    what: str
    run: Callable[[], Any]
    done: Callable[[Any, BaseException | None, bool], None]


def run_chores(chores: list[Chore]) -> list[tuple[Any, BaseException | None]]:
    """On a lane thread: each chore in turn, one wake-up of the lane (and of the loop, for
    the answer) for all. After a failure the rest are not tried (the database is likely
    down: each would wait out its own timeout); they fail as ``Unavailable``."""
    results: list[tuple[Any, BaseException | None]] = []
    failed: str | None = None
    for chore in chores:
        if failed is not None:
            results.append((None, Unavailable(f"{chore.what}: not tried after {failed} failed")))
            continue
        try:
            results.append((chore.run(), None))
        except Exception as exc:  # reported to the loop, which decides
            results.append((None, exc))
            failed = chore.what
    return results


Done = Callable[[Any, BaseException | None, bool], None]


def chores_call(chores: list[Chore], failed: Callable[[str, BaseException], None]
                ) -> tuple[str, Callable[[], Any], Done]:
    """(what, run, done) of one op that runs ``chores`` (``run_chores``) and answers each
    as if it had been an op of its own; ``failed(what, error)`` is told of each failure
    first (the caller's outage handling)."""
    if len(chores) == 1:
        return chores[0].what, chores[0].run, chores[0].done

    def done(results: Any, error: BaseException | None, late: bool) -> None:
        if error is not None or results is None:  # the op as a whole (its deadline)
            for chore in chores:
                chore.done(None, error, late)
            return
        for chore, (result, error_of) in zip(chores, results, strict=True):
            if error_of is not None and not late:
                failed(chore.what, error_of)
            chore.done(result, error_of, late)

    return " + ".join(c.what for c in chores), lambda: run_chores(chores), done


class Completions:
    """Where lane threads post finished ops; ``fileno`` is readable while any wait."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Lane, Op]] = queue.SimpleQueue()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def post(self, lane: Lane, op: Op) -> None:
        self._queue.put((lane, op))
        self.wake()

    def wake(self) -> None:
        """Make ``fileno`` readable (from any thread): the loop's wait returns. Others that
        answer the loop (the history writer) wake it so too."""
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe is awake already
            os.write(self._write, b"x")

    def drain(self) -> list[tuple[Lane, Op]]:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass
        found = []
        while True:
            try:
                found.append(self._queue.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class ConnectionTracker:
    """Which DB-API connection each thread has checked out, so a stuck one can be cut."""

    def __init__(self, engine: Engine) -> None:
        self._by_thread: dict[int, Any] = {}
        self._lock = threading.Lock()
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        with self._lock:
            self._by_thread[threading.get_ident()] = dbapi_connection

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        with self._lock:
            ident = threading.get_ident()
            # a failed connect checks in None: nothing was checked out
            if dbapi_connection is not None and self._by_thread.get(ident) is dbapi_connection:
                del self._by_thread[ident]

    def cut(self, thread_ident: int | None) -> bool:
        """Shut the socket of the connection ``thread_ident`` holds (never blocks)."""
        if thread_ident is None:
            return False
        with self._lock:
            connection = self._by_thread.get(thread_ident)
        fd = socket_of(connection) if connection is not None else None
        if fd is None:
            return False
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        return True


@dataclass(eq=False)
class _Runner:
    """One thread of a lane; replaced when it is stuck."""

    inbox: queue.SimpleQueue[Op | None] = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None


class Lane:
    """Ops run one at a time, in order, on a thread of the lane's own."""

    def __init__(self, name: str, completions: Completions,
                 tracker: ConnectionTracker | None = None) -> None:
        self.name = name
        self.completions = completions
        self.tracker = tracker
        self.pending: deque[Op] = deque()
        self.current: Op | None = None
        self.abandoned = 0
        # ``defer``: the current op reaches the thread at ``start``, which the master calls
        # just before its wait; the thread then wakes while the loop sleeps and never
        # waits for the interpreter lock the loop holds (nor makes the loop wait for it)
        self.defer = False
        self._unsent: Op | None = None
        self._runner = self._start_runner()

    def _start_runner(self) -> _Runner:
        runner = _Runner()
        thread = threading.Thread(target=self._work, args=(runner,), daemon=True,
                                  name=f"db-{self.name}")
        runner.thread = thread
        thread.start()
        return runner

    def _work(self, runner: _Runner) -> None:
        name_thread(f"db-{self.name}")
        while True:
            op = runner.inbox.get()
            if op is None:
                return
            try:
                op.result = op.run()
            except BaseException as exc:  # reported to the loop, which decides
                op.error = exc
            self.completions.post(self, op)

    # ----- loop side ----------------------------------------------------------------------
    def submit(self, op: Op, now: float) -> None:
        self.pending.append(op)
        self.pump(now)

    def pump(self, now: float) -> None:
        if self.current is None and self.pending:
            op = self.pending.popleft()
            op.started = now
            op.deadline = now + op.timeout
            self.current = op
            if self.defer:
                self._unsent = op
            else:
                self._runner.inbox.put(op)

    def start(self) -> None:
        """Hand the current op to the thread, if it has not been yet (``defer``)."""
        op, self._unsent = self._unsent, None
        if op is not None and op is self.current:
            self._runner.inbox.put(op)

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.pending)

    def finished(self, op: Op, now: float) -> bool:
        """The loop got ``op`` back: True when it is current (not abandoned)."""
        if op is not self.current:
            return False
        self.current = None
        self.pump(now)
        return True

    def next_deadline(self) -> float | None:
        return self.current.deadline if self.current is not None else None

    def abandon(self, now: float) -> Op | None:
        """Give up on the current op: cut its connection, move on with a fresh thread."""
        op = self.current
        if op is None:
            return None
        op.abandoned = True
        self.abandoned += 1
        old = self._runner
        assert old.thread is not None
        if self.tracker is not None:
            self.tracker.cut(old.thread.ident)
        old.inbox.put(None)  # it exits after the stuck op returns, if ever
        self._unsent = None
        self._runner = self._start_runner()
        self.current = None
        self.pump(now)
        return op

    def drop_pending(self) -> list[Op]:
        ops = list(self.pending)
        self.pending.clear()
        return ops

    def close(self) -> None:
        self._runner.inbox.put(None)

    def join(self, timeout: float) -> bool:
        thread = self._runner.thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

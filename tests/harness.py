"""Run real masters in subprocesses and watch what they do, with deadlines, never sleeps."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from guard import marked

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
WATCH_INTERVAL = 0.1  # how often a master's process tree is recorded (about 3 ms of CPU each)
RUN_LINE = re.compile(r"panda\.master: (?P<name>\S+) run (?P<run>\d+) outcome=(?P<outcome>\S+)"
                      r" duration=(?P<duration>\S+)s delay=(?P<delay>\S+)s"
                      r" queued=(?P<queued>\S+)s pid=(?P<pid>\d+)")
MASTER_TOKEN = "PYTEST_PANDA_MASTER"  # in the environment of everything one master started


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0,
             what: str | Callable[[], str] = "condition", interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds.
    ``what`` may be a callable: the description is then made at the failure (a log's tail
    as it is then, not as it was when the wait began)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {described}")
        time.sleep(interval)


def recorded(path: Path) -> list[dict[str, Any]]:
    """The events the test scripts appended to ``path``, one JSON object a line. Only whole
    lines: a read beside a script's append may see part of it (a read of a regular file
    does not wait for a write under way), which the next read sees whole."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def write_config(directory: Path, scripts: dict[str, dict[str, Any]], *,
                 package: str = "testscripts", extra: str = "", **daemon: Any) -> Path:
    keys = {"enable": "True", "package": package, "n_proc": 2, **daemon}
    lines = ["[daemon]"] + [f"{key} = {value}" for key, value in keys.items()]
    body = json.dumps(scripts, indent=4).splitlines()
    lines.append("config = " + body[0])
    lines.extend("    " + line for line in body[1:])
    path = directory / "panda_server.cfg"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def script_env(record: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), str(REPO), env.get("PYTHONPATH", "")])
    env["PANDA_TEST_RECORD"] = str(record)
    env["PANDA_DAEMON_STATE_DIR"] = str(record.parent / "state")
    env["PYTHONUNBUFFERED"] = "1"
    # run as root never switches users, but check-config (and start) would refuse without
    # uname: the tests' masters run as whoever runs the tests
    env.setdefault("PANDA_NO_ROOT", "1")
    env.update(extra)
    return env


class MasterProcess:
    """A ``panda-daemon run`` in a subprocess: its log, its recorded events, its tree, and
    every process it started, wherever it went (found by a token in its environment)."""

    def __init__(self, config: Path, workdir: Path, server: str = "test-server",
                 command: tuple[str, ...] = ("run",), env: dict[str, str] | None = None,
                 log_level: str = "DEBUG", extra_env: dict[str, str] | None = None) -> None:
        self.record = workdir / f"record-{server}.jsonl"
        self.record.touch()
        self.log_path = workdir / f"master-{server}.log"
        self._log = self.log_path.open("wb")
        self.token = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "pandaserver.daemons.master",
             "-c", str(config), "--server-name", server, "--log-level", log_level, *command],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**(env or script_env(self.record, **(extra_env or {}))),
                 MASTER_TOKEN: self.token},
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}
        self._seen_lock = threading.Lock()
        # Record the tree from the start and all along, not only when a test calls tree():
        # teardown then checks every process the master ever had, also after a kill -9.
        self._stop_watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{server}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            self.tree()
            if self._stop_watching.wait(WATCH_INTERVAL):
                return

    # -- observation --
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self, event: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [row for row in recorded(self.record)
                if (event is None or row["event"] == event) and (name is None or row["name"] == name)]

    def outcomes(self, name: str) -> list[str]:
        marker = f"panda.master: {name} run "
        found = []
        for line in self.log().splitlines():
            if marker in line and " outcome=" in line:
                found.append(line.split(" outcome=")[1].split()[0])
        return found

    def runs(self, name: str) -> list[dict[str, Any]]:
        """The master's log line of each finished run of ``name``: outcome, duration, delay
        (main() called minus due time, both on the system-wide monotonic clock: negative
        would mean early), queued (handed to a worker minus due time), pid."""
        found = []
        for match in RUN_LINE.finditer(self.log()):
            if match["name"] == name:
                row: dict[str, Any] = match.groupdict()
                for key in ("duration", "delay", "queued"):
                    row[key] = float(row[key])
                row["run"], row["pid"] = int(row["run"]), int(row["pid"])
                found.append(row)
        return found

    def wait_events(self, count: int, event: str, name: str, timeout: float = 15.0) -> list[Any]:
        return wait_for(lambda: len(self.events(event, name)) >= count and self.events(event, name),
                        timeout, lambda: self._stuck(f"{count} {event} events of {name}"))

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        wait_for(lambda: self.log().count(text) >= count, timeout,
                 lambda: self._stuck(f"{text!r} x{count} in the master log"))

    def _stuck(self, what: str) -> str:
        """What a failed wait reports: whether the master still runs, its tree, and (when it
        does) the stack of each of its threads, which it writes to its log as it aborts
        (it runs with faulthandler on): the test has failed, the master is of no more use."""
        code = self.proc.poll()
        if code is not None:
            return f"{what}: the master exited with status {code}\n--- log ---\n{self.log()[-3000:]}"
        rows = []
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                rows.append(f"  {proc.pid} {proc.status()} {' '.join(proc.cmdline())[:160]}")
        self.signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return (f"{what}: the master was still running; its tree:\n" + "\n".join(rows)
                + f"\n--- log, ending with its threads' stacks ---\n{self.log()[-6000:]}")

    def tree(self) -> list[psutil.Process]:
        """The master and every descendant; remembered so teardown can check them."""
        procs = []
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        with self._seen_lock:
            for proc in procs:
                self.seen.setdefault(proc.pid, proc)
        return procs

    def workers(self) -> list[psutil.Process]:
        found = []
        for proc in self.tree()[1:]:
            try:
                if any("pandaserver.daemons.worker" in part for part in proc.cmdline()) or \
                        proc.cmdline()[0].startswith("panda_daemon: worker"):
                    found.append(proc)
            except (psutil.Error, IndexError):
                continue
        return found

    def survivors(self) -> list[int]:
        """Pids of every process ever seen in this master's tree that still runs (after a
        kill -9 of the master: what escaped the lifeline)."""
        with self._seen_lock:
            procs = list(self.seen.values())
        return sorted(proc.pid for proc in procs if _alive(proc))

    def leftovers(self) -> list[psutil.Process]:
        """Every live process this master started (itself included), wherever it is now:
        what ``ps`` would show of it."""
        return marked(MASTER_TOKEN, self.token)

    # -- control --
    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> list[int]:
        """Kill anything left; return the pids that were still alive (should be none)."""
        self.tree()
        self._stop_watching.set()
        self._watcher.join(5)
        left = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with self._seen_lock:
            procs = list(self.seen.values())

        def alive() -> list[psutil.Process]:
            found = {p.pid: p for p in procs if _alive(p)}
            found.update((p.pid, p) for p in self.leftovers())
            return list(found.values())

        # workers notice their master's death through the lifeline within milliseconds, then
        # sweep what its runs left (a /proc scan: seconds on a loaded 2-core machine): a
        # generous bound; anything still alive after it is a leftover, reported and killed
        try:
            wait_for(lambda: not alive(), 10.0, "the master's processes to end")
        except AssertionError:
            for _ in range(20):  # until none is left: a dying parent may leave a child
                still = alive()
                if not still:
                    break
                for proc in still:
                    if proc.pid not in left:
                        left.append(proc.pid)
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                time.sleep(0.05)
        self._log.close()
        return left


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before children: read down the tree
    from ``/proc/PID/task/TID/children``, so the cost grows with the tree, where psutil's
    ``children(recursive=True)`` reads the parent of every process on the machine (the
    watch thread of each master does this ten times a second). [] when ``pid`` is gone."""
    if not _PROC_CHILDREN:
        try:
            root = psutil.Process(pid)
            return [pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []
    if not os.path.exists(f"/proc/{pid}"):
        return []
    found = [pid]
    for parent in found:  # grows while it is read: breadth first
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as children:
                    found.extend(int(word) for word in children.read().split())
            except (OSError, ValueError):
                continue
    return found


_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


@contextmanager
def running_master(config: Path, workdir: Path, **kwargs: Any) -> Iterator[MasterProcess]:
    master = MasterProcess(config, workdir, **kwargs)
    try:
        yield master
    finally:
        left = master.cleanup()
        assert not left, f"processes left behind: {left}\n{master.log()[-3000:]}"
        spun = [line for line in master.log().splitlines() if SPUN in line]
        assert not spun, f"the master's loop spun: {spun[:3]}"


SPUN = "times in a row without waiting"  # the master's log line of a loop that spins


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

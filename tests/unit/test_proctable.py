"""The /proc reader containment relies on, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from harness import wait_for

from pandaserver.daemons.containment import proctable
from pandaserver.daemons.containment.proctable import Proc


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], env={**os.environ, "PANDA_X_MARK": "a:b=c",
                                                   "XPANDA_X_MARK": "decoy"})
    yield proc
    proc.kill()
    proc.wait()


def test_stat_parses_a_command_name_with_spaces_and_parentheses() -> None:
    data = b"4242 (we) ird (name) S 1 4240 4239 0 -1 4194560 " + b" ".join(
        str(n).encode() for n in range(20, 52))
    proc = proctable._parse(4242, data)
    assert proc == Proc(pid=4242, ppid=1, pgid=4240, sid=4239, start=32, state="S")


def test_scan_sees_a_child_with_its_parent_group_session_and_start(
        sleeper: subprocess.Popen[bytes]) -> None:
    table = proctable.scan()
    me, child = table[os.getpid()], table[sleeper.pid]
    assert child.ppid == me.pid and child.sid == me.sid and child.pgid == me.pgid
    assert child.start >= me.start and not child.ended
    assert sleeper.pid in proctable.descendants(proctable.children_map(table), [me.pid])


def test_environ_value_is_exact(sleeper: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: proctable.environ_value(sleeper.pid, "PANDA_X_MARK"), 5, "exec")
    assert proctable.environ_value(sleeper.pid, "PANDA_X_MARK") == "a:b=c"
    assert proctable.environ_value(sleeper.pid, "X_MARK") is None  # not a suffix match
    assert proctable.environ_value(sleeper.pid, "NO_SUCH_VARIABLE") is None
    assert proctable.cmdline(sleeper.pid) == "sleep 60"


def test_a_process_is_named_by_pid_and_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    proc = proctable.stat(sleeper.pid)
    assert proc is not None and proctable.alive(proc)
    impostor = Proc(pid=proc.pid, ppid=proc.ppid, pgid=proc.pgid, sid=proc.sid,
                    start=proc.start + 1, state="S")  # as if the pid had been reused
    assert not proctable.alive(impostor)
    assert not proctable.send(impostor, signal.SIGKILL)
    assert sleeper.poll() is None, "a process with another start time was signalled"
    assert proctable.terminate([proc]) == [proc]
    assert sleeper.wait(5) == -signal.SIGTERM
    assert not proctable.alive(proc) and not proctable.send(proc, signal.SIGKILL)


def test_the_boot_clock_offset_places_a_new_process_start_now() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        proc = proctable.stat(child.pid)
        assert proc is not None
        started = proc.started_boottime - proctable.boottime_offset()
        assert abs(started - time.monotonic()) < 5.0
    finally:
        child.kill()
        child.wait()

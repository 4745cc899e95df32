"""``run`` starts worker 1 before the master is built (``pandaserver.commands.prespawn``):
the pool's spawn of worker 1 gets that process, once, and only with the same command line;
one no spawn took is ended; the early worker carries the master's marker."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pandaserver.commands import prespawn
from pandaserver.daemons.containment import proctable
from pandaserver.daemons.containment.tracker import MASTER_VAR
from pandaserver.daemons.master.loop import worker_argv


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.killed = False
        self.waited = False

    def kill(self) -> None:
        self.killed = True

    def wait(self, timeout: float | None = None) -> int:
        self.waited = True
        return -9


class FakeSpawned:
    def __init__(self, pid: int, env: dict[str, str] | None) -> None:
        self.popen = FakePopen(pid)
        self.env = env
        self.closed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], FakeSpawned]]:
    made: list[tuple[list[str], FakeSpawned]] = []

    def spawn_worker(argv: list[str], env: dict[str, str] | None = None) -> Any:
        spawned = FakeSpawned(1000 + len(made), env)
        made.append((argv, spawned))
        return spawned

    monkeypatch.setattr(prespawn.processes, "spawn_worker", spawn_worker)
    return made


def test_the_options_are_the_masters_own_for_worker_one() -> None:
    for config in ("/etc/panda/panda_server.cfg", None):
        assert prespawn.worker_argv("s1", "DEBUG", config, 1) == [
            *worker_argv("s1", "DEBUG", None, config), "--index", "1"]


def test_the_early_worker_goes_to_the_spawn_of_its_command_line_once(
        spawns: list[tuple[list[str], FakeSpawned]]) -> None:
    layer = prespawn.Prespawned()
    argv = prespawn.worker_argv("s1", "INFO", None, 1)
    before = os.environ.get(MASTER_VAR)
    layer.start(argv)
    assert os.environ.get(MASTER_VAR) == before  # the marker is the worker's, not ours yet
    (_, early), = spawns
    assert early.env is not None
    assert early.env[MASTER_VAR] == proctable.identity_of(os.getpid())
    other = layer.spawn(prespawn.worker_argv("s1", "INFO", None, 2))
    assert other is not early and len(spawns) == 2
    assert layer.spawn(argv) is early  # handed over, not started again
    again = layer.spawn(argv)  # a replacement of worker 1 later: an ordinary spawn
    assert again is not early and len(spawns) == 3
    layer.discard()
    assert not early.popen.killed and not early.closed  # the pool's now, not ours


def test_an_early_worker_no_spawn_took_is_ended(
        spawns: list[tuple[list[str], FakeSpawned]]) -> None:
    layer = prespawn.Prespawned()
    layer.start(prespawn.worker_argv("s1", "INFO", None, 1))
    layer.discard()
    (_, early), = spawns
    assert early.popen.killed and early.popen.waited and early.closed
    layer.discard()  # once only

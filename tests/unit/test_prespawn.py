"""``run`` starts worker 1 before its preflight (``pandaserver.commands.prespawn``): the
pool's spawn of worker 1 gets that process, once, and only with the same command line; one
no spawn took is ended, and a refused start (config or database) ends it having built no
master; the early worker carries the master's marker. The master's modules are imported
while the preflight's import check runs, and only when the other checks passed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from pandaserver import exitcodes
from pandaserver.commands import main as cli
from pandaserver.commands import prespawn
from pandaserver.config import load_config
from pandaserver.daemons.containment import proctable
from pandaserver.daemons.containment.tracker import MASTER_VAR
from pandaserver.daemons.master.loop import worker_argv
from pandaserver.preflight import imports
from pandaserver.preflight import validate as preflight


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


def config(tmp_path: Path, *lines: str) -> Any:
    path = tmp_path / "panda_server.cfg"
    path.write_text("\n".join(["[daemon]", "enable = True",
                               "package = pandaserver.daemons.scripts", *lines,
                               'config = {"dummy_test": {"period": 600}}', ""]),
                    encoding="utf-8")
    return load_config(str(path))


ARGS = argparse.Namespace(server_name="s1", log_level="INFO")


def test_a_refused_config_ends_the_early_worker_and_builds_no_master(
        spawns: list[tuple[list[str], FakeSpawned]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    built: list[Any] = []
    monkeypatch.setattr(cli, "build_master", lambda *a, **k: built.append(k))
    # refused by the preflight's database check, after worker 1 was started
    code = cli.cmd_run(config(tmp_path, "db_url = nosuchdb://host/db"), ARGS)
    assert code == exitcodes.RET_CONFIG and not built
    (argv, early), = spawns  # started before the preflight, as worker 1 of this master
    assert argv == prespawn.worker_argv("s1", "INFO", str(tmp_path / "panda_server.cfg"), 1)
    assert early.popen.killed and early.popen.waited and early.closed


def test_a_config_refused_as_it_was_read_starts_no_worker(
        spawns: list[tuple[list[str], FakeSpawned]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    built: list[Any] = []
    monkeypatch.setattr(cli, "build_master", lambda *a, **k: built.append(k))
    assert cli.cmd_run(config(tmp_path, "n_proc = 0"), ARGS) == exitcodes.RET_CONFIG
    assert not built and not spawns


def test_a_passed_preflight_hands_the_early_worker_to_the_master(
        spawns: list[tuple[list[str], FakeSpawned]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    layers: list[Any] = []

    def build(cfg: Any, args: argparse.Namespace, **options: Any) -> Any:
        layers.append(options["processes"])
        assert not spawns[0][1].popen.killed  # alive while the master is built
        return argparse.Namespace(run=lambda: exitcodes.RET_OK)

    monkeypatch.setattr(cli, "build_master", build)
    assert cli.cmd_run(config(tmp_path, "n_proc = 2"), ARGS) == exitcodes.RET_OK
    (layer,) = layers
    assert isinstance(layer, prespawn.Prespawned)
    (_, early), = spawns
    assert early.closed  # the fake master never spawned it: ended when run returned


def test_the_masters_modules_are_imported_while_the_import_check_runs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    steps: list[str] = []
    start, finish = imports.start_probe, imports.finish_probe

    def started(*args: Any, **kwargs: Any) -> imports.StartedProbe:
        steps.append("probe started")
        return start(*args, **kwargs)

    def finished(probe: imports.StartedProbe) -> imports.ProbeResult:
        steps.append("probe answer awaited")
        return finish(probe)

    monkeypatch.setattr(imports, "start_probe", started)
    monkeypatch.setattr(imports, "finish_probe", finished)
    verdict = preflight.validate(config(tmp_path), preflight.RUN, cwd=str(tmp_path),
                                 meanwhile=lambda: steps.append("meanwhile"))
    assert verdict.exit_code(preflight.RUN) == exitcodes.RET_OK
    assert steps == ["probe started", "meanwhile", "probe answer awaited"]
    steps.clear()
    refused = preflight.validate(config(tmp_path, "n_proc = 0"), preflight.RUN,
                                 cwd=str(tmp_path), meanwhile=lambda: steps.append("meanwhile"))
    assert refused.exit_code(preflight.RUN) == exitcodes.RET_CONFIG
    assert "meanwhile" not in steps  # nothing imported for a start that is refused anyway

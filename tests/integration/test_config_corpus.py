"""The broken-config corpus: one row per config, run through check-config and run (and start
and reload where they apply), each expecting an exit status and a message fragment; every
output is grepped for the secrets planted in the corpus.

The commands run in this process through ``pandaserver.commands.main.main`` (the import
check still starts its real interpreter). ``run`` is real up to the master: ``build_master``
is replaced by a recorder (and its early worker 1 by none), so a config that passes
validation is seen to start (and with which scripts) without a master left running;
``start`` is only run on rows it must refuse (forking is made to fail the test).
tests/acceptance/test_config_truth.py does the same for a few rows with real masters.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from config_corpus import CASES, SECRETS, Case, section
from harness import FIXTURES, REPO

from pandaserver.commands import main as cli
from pandaserver.commands import service as service_commands
from pandaserver.commands.prespawn import Prespawned
from pandaserver.config import secrets
from pandaserver.preflight import validate as validation


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class Runner:
    """Runs the commands of one case in this process and keeps every output."""

    def __init__(self, case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
        self.case, self.tmp, self.capsys = case, tmp, capsys
        self.outputs: list[str] = []
        self.built: list[list[str]] = []
        secrets.forget_all()  # every case registers its own secrets, or shows them
        env = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO)]),
               "PANDA_DAEMON_STATE_DIR": str(tmp / "state"), "HOME": str(tmp / "home"),
               "PANDA_NO_ROOT": "1"}
        for name in [n for n in os.environ if n.startswith("PANDA_")]:
            monkeypatch.delenv(name)
        for name, value in {**env, **case.env}.items():
            monkeypatch.setenv(name, value.replace("{tmp}", str(tmp)))
        if case.root:
            monkeypatch.delenv("PANDA_NO_ROOT")
            monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.chdir(tmp)
        monkeypatch.setattr(cli, "build_master", self._fake_master)
        # no real worker 1 beside each preflight (tests/unit/test_prespawn.py covers it)
        monkeypatch.setattr(cli, "start_early_worker", lambda cfg, args: Prespawned())
        monkeypatch.setattr(service_commands, "plan_start", self._no_fork)
        text = case.raw if case.raw is not None else section(case.daemon, case.scripts,
                                                              case.server)
        files = {"panda_server.cfg": text} if case.config_arg == "panda_server.cfg" else {}
        files.update(case.files)
        for name, content in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content.replace("{tmp}", str(tmp)), encoding="utf-8")

    def _fake_master(self, cfg: Any, args: argparse.Namespace, **options: Any) -> Any:
        self.built.append(sorted(spec.name for spec in cfg.daemon.enabled_scripts))
        return argparse.Namespace(run=lambda: 0)

    def _no_fork(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{self.case.id}: start went past validation")

    def __call__(self, *argv: str) -> tuple[int, str]:
        prefix = [] if self.case.config_arg is None else ["-c", self.case.config_arg]
        code = cli.main([*prefix, *argv])
        captured = self.capsys.readouterr()
        output = captured.out + captured.err
        self.outputs.append(output)
        return code, output


def assert_no_secret(outputs: list[str], where: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output, f"{where}: the planted secret {secret!r} leaked:\n{output}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_corpus(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> None:
    run = Runner(case, tmp_path, monkeypatch, capsys)
    code, out = run("check-config", *case.check_args)
    assert code == case.check, out
    assert case.fragment in out, out
    if case.check == 0 and "warning" not in out:
        assert "no problems" in out, out
    code, out = run("run")
    if case.run == "starts":
        assert code == 0 and len(run.built) == 1, out
        assert not set(case.dropped) & set(run.built[0]), (run.built, out)
    else:
        assert code == case.run and not run.built, out
    expected = case.fragment if case.run_fragment is None else case.run_fragment
    assert expected in out, out
    if case.start is not None:
        code, out = run("start", "--pidfile", str(tmp_path / "run" / "p.pid"))
        assert code == case.start, out
        assert case.fragment in out or case.start == 0, out
    if case.reload is not None:
        code, out = run("reload", "--pidfile", str(tmp_path / "run" / "p.pid"))
        assert code == case.reload, out
        if case.reload != 3:
            assert case.fragment in out and "not reloading" in out, out
    assert_no_secret(run.outputs, case.id)


def test_corpus_covers_every_key() -> None:
    """Each [daemon] key and each per-script key has at least one row."""
    from pandaserver.config.daemon import ALL_KEYS
    from pandaserver.config.scripts import SCRIPT_KEYS

    text = "\n".join(f"{case.daemon} {case.scripts} {case.fragment}" for case in CASES)
    missing = [key for key in (*ALL_KEYS, *SCRIPT_KEYS) if f"'{key}'" not in text
               and f'"{key}"' not in text]
    assert not missing, missing
    assert len(CASES) >= 60


def test_the_secret_grep_finds_a_leak_when_redaction_is_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The grep above is not vacuous: with redaction switched off, the same rows leak."""
    from pandaserver.config import problems, scripts
    from pandaserver.preflight import report as checks

    for module in (secrets, problems, scripts, validation, checks):
        monkeypatch.setattr(module, "redact", lambda text: text)
    monkeypatch.setattr(secrets, "is_secret_name", lambda name: False)
    monkeypatch.setattr(problems, "is_secret_name", lambda name: False)
    monkeypatch.setattr(scripts, "is_secret_name", lambda name: False)
    monkeypatch.setattr(problems, "may_show", lambda value: True)  # unknown keys' values
    leaked = []
    for case in CASES:
        if case.id in ("db_url-typo-with-password", "unknown-key-db_pwd",
                       "script-key-named-like-a-secret", "arguments-hold-a-url-password"):
            directory = tmp_path / case.id
            directory.mkdir()
            run = Runner(case, directory, monkeypatch, capsys)
            run("check-config")
            try:
                assert_no_secret(run.outputs, case.id)
            except AssertionError:
                leaked.append(case.id)
    assert len(leaked) == 4, leaked


@pytest.mark.parametrize("db_url", ["postgresql+psycopg2://u:pa@ss99@127.0.0.1:1/db",
                                    "postgresql+psycopg2://u:PgPw4242@127.0.0.1:1/db"])
def test_the_database_commands_never_show_a_secret(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """history, locks, fleet and db upgrade connect without validating first: what the
    driver says about an unreachable database still shows no password, nor its tail."""
    case = Case("database-commands", {"db_url": db_url})
    run = Runner(case, tmp_path, monkeypatch, capsys)
    for command in (("history",), ("locks",), ("fleet",), ("db", "upgrade")):
        code, out = run(*command)
        assert code != 0 and "database" in out, out
    assert_no_secret(run.outputs, db_url)


def test_the_database_commands_refuse_a_bad_url_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    case = Case("postgres-scheme", {"db_url": "postgres://u:PgPw4242@127.0.0.1:1/db"})
    run = Runner(case, tmp_path, monkeypatch, capsys)
    for command in (("history",), ("locks",), ("db", "upgrade")):
        code, out = run(*command)
        assert code == 2 and "Traceback" not in out, out
        assert 'did you mean "postgresql+psycopg2"?' in out, out
    assert_no_secret(run.outputs, case.id)

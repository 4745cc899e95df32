"""The import check runs in an interpreter of its own: bounded, and never left behind."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from harness import FIXTURES, REPO, wait_for

from pandaserver.preflight.imports import call_problem, run_probe


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURES), str(REPO)])
    env.update(extra)
    return env


def test_a_module_hanging_at_import_is_killed_with_its_children(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    result = run_probe("testscripts", ["record", "hang_import"], timeout=3,
                       env=_env(PANDA_TEST_HANG_PIDS=str(pids_file)))
    assert result.failure is not None and "did not finish within 3 s" in result.failure
    pids = [int(p) for p in pids_file.read_text().split()]
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                             != psutil.STATUS_ZOMBIE for p in pids), 5, "the probe's processes")


def test_a_module_ending_the_interpreter_is_reported() -> None:
    result = run_probe("testscripts", ["exits_at_import"], env=_env())
    assert result.failure is not None and "ended the interpreter (exit status 3)" in \
        result.failure


def test_imports_and_signatures() -> None:
    result = run_probe("testscripts", ["record", "badsig", "no_such_module", "chatty_import"],
                       env=_env())
    assert result.failure is None and result.package_error is None
    assert set(result.module_errors) == {"no_such_module"}
    assert set(result.signature_errors) == {"badsig"}


def test_call_problem_follows_the_daemons_calling_convention() -> None:
    def legacy(argv: object) -> None: ...

    def keywords(**kwargs: object) -> None: ...

    def extra_with_default(argv: object, verbose: bool = False) -> None: ...

    def needs_more(argv: object, config: object) -> None: ...

    def positional_only(argv: object, /) -> None: ...

    assert call_problem(legacy) is None
    assert call_problem(keywords) is None
    assert call_problem(extra_with_default) is None
    assert "missing a required argument: 'config'" in (call_problem(needs_more) or "")
    assert call_problem(positional_only) is not None

"""check-config's verdict says what will really run: an empty ``config`` is refused by
every command that starts a master, a loop script killed at its timeout every run is
warned about, scripts left out are not counted, and a database error is a refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from pandaserver import exitcodes
from pandaserver.config import load_config
from pandaserver.daemons.master import schedule
from pandaserver.preflight.report import render_check
from pandaserver.preflight.validate import (
    CHECK,
    ERROR,
    RELOAD,
    RUN,
    START,
    WARNING,
    Finding,
    Verdict,
    drop_scripts,
    validate,
)

ENV = {"PANDA_NO_ROOT": "1"}


def write(tmp_path: Path, config: str, **keys: str) -> Path:
    lines = ["[daemon]", "enable = True", "package = pandaserver.daemons.scripts",
             f"db_url = sqlite:///{tmp_path / 'db.sqlite'}"]
    lines += [f"{k} = {v}" for k, v in keys.items()]
    lines.append("config = " + config)
    path = tmp_path / "panda_server.cfg"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("config", ["{}", "{ }", "{\n    }"])
def test_an_empty_config_object_is_refused_by_every_command_that_starts_a_master(
        tmp_path: Path, config: str) -> None:
    cfg = load_config(str(write(tmp_path, config)))
    for command in (CHECK, RUN, START, RELOAD):
        verdict = validate(cfg, command, try_import=False, euid=1000, environ=ENV)
        assert verdict.exit_code(command) == exitcodes.RET_CONFIG, command
        (error,) = verdict.errors(command)
        assert "key 'config': is an empty object ({}): no scripts will run" in error.message
        assert "name at least one script" in error.message


def loop_warnings(tmp_path: Path, entry: str) -> list[str]:
    cfg = load_config(str(write(tmp_path, '{"lp": ' + entry + "}")))
    verdict = validate(cfg, CHECK, try_import=False, euid=1000, environ=ENV)
    assert verdict.exit_code(CHECK) == exitcodes.RET_OK  # a warning: it runs
    return [f.message for f in verdict.warnings(CHECK)]


def test_a_loop_script_with_a_timeout_not_above_its_period_is_warned_about(
        tmp_path: Path) -> None:
    for timeout in (10, 30):
        (warning,) = loop_warnings(
            tmp_path, f'{{"module": "dummy_loop", "period": 30, "loop": true, "timeout": {timeout}}}')
        assert f"config script 'lp' key 'timeout': timeout {timeout} s is not longer than the" \
               " period 30 s of this loop script" in warning
        assert "killed at its timeout every time" in warning and "default is 90 s" in warning
    assert loop_warnings(tmp_path, '{"module": "dummy_loop", "period": 30, "loop": true}') == []
    assert loop_warnings(tmp_path, '{"module": "dummy_loop", "period": 30, "loop": true,'
                                   ' "timeout": 31}') == []
    # without loop mode a run is one call: a timeout under the period is ordinary
    assert loop_warnings(tmp_path, '{"module": "dummy_loop", "period": 30, "timeout": 10}') == []


def test_a_loop_run_that_ends_at_its_period_is_no_overrun() -> None:
    assert schedule.overrun(0.0, 20.03, 20) == 0.0  # the call that crossed the period
    assert schedule.overrun(0.0, 1.05, 1.0) == 0.0
    assert schedule.overrun(100.0, 100.0 + 3600 + 30, 3600) == 0.0  # 1 % of a long period
    assert schedule.overrun(0.0, 1.2, 1.0) == pytest.approx(0.2)
    assert schedule.overrun(0.0, 25.0, 10) == 15.0
    assert schedule.overrun(0.0, 3600 + 40.0, 3600) == 40.0


def test_the_verdict_counts_only_scripts_that_will_run(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDA_NO_ROOT", "1")
    config = ('{"dummy_test": {"period": 10}, "nosuch": {"period": 30},'
              ' "other": {"period": 30, "module": "nosuch_either"},'
              ' "off": {"period": 30, "module": "dummy_test", "enable": false},'
              ' "bad": {"period": -1}}')
    cfg = load_config(str(write(tmp_path, config)))
    text, code = render_check(cfg)
    assert code == exitcodes.RET_CONFIG  # problems: check-config says so
    assert "3 problem(s): these scripts or keys are left out" in text
    assert ("verdict: run starts 1 script(s) on 1 worker(s); start starts 1 script(s) on 1"
            " worker(s); 2 more script(s) (nosuch, other) wait until their module imports"
            in text), text
    # run and start hold the same two until a worker imports their module
    verdict = validate(cfg, RUN, euid=1000, environ=ENV)
    drop_scripts(cfg, verdict)
    assert sorted(cfg.daemon.waiting_imports) == ["nosuch", "other"]
    assert "cannot import pandaserver.daemons.scripts.nosuch" in \
        cfg.daemon.waiting_imports["nosuch"]


def test_a_database_that_refuses_the_check_is_a_refusal_not_a_start(tmp_path: Path) -> None:
    cfg = load_config(str(write(tmp_path, '{"dummy_test": {"period": 10}}')))
    verdict = Verdict()
    verdict.add(Finding(ERROR, "db_url: cannot connect: password authentication failed",
                        code=exitcodes.RET_DATABASE, stops=(CHECK,)))
    verdict.add(Finding(WARNING, "something to know"))
    from pandaserver.preflight import report

    line = report._verdict_line(cfg, verdict)
    assert line.startswith("verdict: check-config refuses (exit 9): the database did not"
                           " accept the connection"), line
    assert "no sync script runs and no history is recorded until it does" in line
    assert not line.startswith("verdict: run starts")

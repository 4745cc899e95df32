"""The ``panda-daemon`` command for real: run-once, check-config, config errors, titles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
from harness import REPO, running_master, script_env, wait_for, write_config

REALWORLD = """[daemon]
enable = True
uname = atlpan
gname = zp
package = pandaserver.daemons.scripts
n_proc = 4
proc_lifetime = 14400
config = {
    "dummy_test": {
        "enable": true, "period": 120, "timeout": 300},
    "add_main": {
        "enable": true, "period": 240, "loop": true},
    "copyArchive": {
        "enable": true, "period": 2400, "sync": true},
    "proxyCache": {
        "module": "panda_activeusers_query", "enable": true, "period": 600},
    "network_configurator": {
        "enable": true, "module": "configurator", "arguments": ["--network"], "period": 400, "sync": true}
    }
"""


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pandaserver.daemons.master", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env=env or script_env(tmp_path / "record.jsonl"),
    )


def test_run_once_exit_codes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {
        "good": {"module": "record", "period": 60, "arguments": [0]},
        "bad": {"module": "fail", "period": 60},
        "stuck": {"module": "hang", "period": 60, "timeout": 0.5},
        "gone": {"module": "exits", "period": 60, "arguments": ["os"]},
        "off": {"module": "record", "period": 60, "enable": False},
    })
    good = cli(tmp_path, "-c", str(cfg), "run-once", "good")
    assert good.returncode == 0, good.stderr
    assert "hello from good" in good.stderr and "outcome=ok" in good.stderr
    assert cli(tmp_path, "-c", str(cfg), "run-once", "bad").returncode == 1
    stuck = cli(tmp_path, "-c", str(cfg), "run-once", "stuck")
    assert stuck.returncode == 10 and "outcome=timeout" in stuck.stderr
    assert cli(tmp_path, "-c", str(cfg), "run-once", "gone").returncode == 4
    off = cli(tmp_path, "-c", str(cfg), "run-once", "off")
    assert off.returncode == 0 and "disabled in the config; running it anyway" in off.stderr
    typo = cli(tmp_path, "-c", str(cfg), "run-once", "goood")
    assert typo.returncode == 2 and 'did you mean "good"' in typo.stderr


def test_missing_config_names_every_path_tried(tmp_path: Path) -> None:
    env = script_env(tmp_path / "r.jsonl", PANDA_HOME=str(tmp_path / "home"))
    result = cli(tmp_path, "check-config", env=env)
    assert result.returncode == 2
    assert str(tmp_path / "home" / "etc" / "panda" / "panda_server.cfg") in result.stderr
    assert "/etc/panda/panda_server.cfg" in result.stderr
    explicit = cli(tmp_path, "-c", str(tmp_path / "nope.cfg"), "run")
    assert explicit.returncode == 2 and "nope.cfg" in explicit.stderr


def test_panda_home_config_is_found(tmp_path: Path) -> None:
    home = tmp_path / "home" / "etc" / "panda"
    home.mkdir(parents=True)
    write_config(home, {"a": {"module": "record", "period": 5}})
    env = script_env(tmp_path / "r.jsonl", PANDA_HOME=str(tmp_path / "home"))
    result = cli(tmp_path, "check-config", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(home / "panda_server.cfg") in result.stdout


def test_check_config_table_and_problems(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {
        "fine": {"module": "record", "period": 60, "arguments": ["x", 1]},
        "zero": {"module": "record", "period": 0},
        "typo": {"module": "record", "period": 60, "perod": 5},
        "nomod": {"module": "no_such_module", "period": 60},
    })
    result = cli(tmp_path, "-c", str(cfg), "check-config")
    assert result.returncode == 2
    out = result.stdout
    row = next(line for line in out.splitlines() if line.startswith("fine"))
    assert row.split() == ["fine", "true", "record", "60", "180", "false", "false", "x", "1",
                           "ok"]
    assert "script 'zero' key 'period': must be positive, got: 0" in out
    assert "script 'typo' key 'perod': unknown key" in out and 'did you mean "period"' in out
    assert "script 'nomod'" in out and "cannot import testscripts.no_such_module" in out
    assert "4 problem(s)" not in out and "3 problem(s)" in out


def test_check_config_clean_exit_zero(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"fine": {"module": "record", "period": 60}})
    result = cli(tmp_path, "-c", str(cfg), "check-config")
    assert result.returncode == 0 and "no problems" in result.stdout


def test_bundled_example_config_is_clean(tmp_path: Path) -> None:
    result = cli(tmp_path, "-c", str(REPO / "etc" / "panda_server.cfg"), "check-config")
    assert result.returncode == 0, result.stdout
    assert "dummy_test" in result.stdout


def test_disabled_daemon_exits_zero(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}}, enable="False")
    result = cli(tmp_path, "-c", str(cfg), "run")
    assert result.returncode == 0 and "the daemon is disabled" in result.stderr


def test_fatal_config_refuses_to_start(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}}, n_proc=0)
    result = cli(tmp_path, "-c", str(cfg), "run")
    assert result.returncode == 2
    assert "key 'n_proc': must be at least 1, got: 0" in result.stderr


def test_env_variable_values(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}},
                       package="${TEST_PKG}", n_proc="$TEST_NPROC")
    env = script_env(tmp_path / "r.jsonl", TEST_PKG="testscripts", TEST_NPROC="3")
    ok = cli(tmp_path, "-c", str(cfg), "check-config", env=env)
    assert ok.returncode == 0 and "n_proc: 3" in ok.stdout
    unset = cli(tmp_path, "-c", str(cfg), "check-config",
                env=script_env(tmp_path / "r.jsonl", TEST_PKG="testscripts"))
    assert unset.returncode == 2 and "$TEST_NPROC, which is not set" in unset.stdout


def test_realworld_section_loads_and_runs_what_exists(tmp_path: Path) -> None:
    cfg = tmp_path / "panda_server.cfg"
    cfg.write_text(REALWORLD, encoding="utf-8")
    with running_master(cfg, tmp_path) as master:
        master.wait_log("Dummy test of PanDA daemon ---- END")
        # the scripts whose module is not here are said once (by the preflight) and held,
        # not counted among those that run nor said again by the master
        master.wait_log("scripts (4 more wait until their module imports), 4 workers")
        for name, module in (("add_main", "add_main"), ("copyArchive", "copyArchive"),
                             ("proxyCache", "panda_activeusers_query"),
                             ("network_configurator", "configurator")):
            line = (f"config script '{name}': cannot import "
                    f"pandaserver.daemons.scripts.{module}")
            assert master.log().count(line) == 1, line
        assert "will not run" not in master.log()
        assert "[dummy_test run 1]" in master.log()
        assert len(master.workers()) == 4


def test_legacy_script_runs_unmodified_and_output_is_labelled(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"old": {"module": "legacy", "period": 60},
                                  "pool": {"module": "lockpool", "period": 60}})
    with running_master(cfg, tmp_path) as master:
        event = master.wait_events(1, "start", "old")[0]
        assert event["argv"] == ["old"] and event["has_tbuf"] is True
        assert master.wait_events(1, "start", "pool")[0]["lock_pool"] == "LockPool"
        master.wait_log("legacy stderr line")
        lines = master.log().splitlines()
        out = next(x for x in lines if "legacy stdout line" in x)
        err = next(x for x in lines if "legacy stderr line" in x)
        assert "[old run " in out and "panda.script.stdout" in out
        assert "[old run " in err and "panda.script.stderr" in err


def test_process_titles_show_role_and_state(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"stuck": {"module": "hang", "period": 60}}, n_proc=2)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "stuck")

        def titles() -> list[str]:
            found = []
            for proc in master.tree():
                try:
                    found.append(" ".join(proc.cmdline()).strip())
                except psutil.Error:
                    continue
            return found

        wait_for(lambda: any(t.startswith("panda_daemon: worker") and t.endswith("running stuck")
                             for t in titles()), 10, "a worker title naming its script")
        assert any(t.startswith("panda_daemon: master") for t in titles())
        wait_for(lambda: any(t.startswith("panda_daemon: worker") and t.endswith(" idle")
                             for t in titles()), 10, "the other worker titled idle")


def test_scripts_get_a_database_tbuf(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"db": {"module": "dbuse", "period": 60}})
    with running_master(cfg, tmp_path) as master:
        event = master.wait_events(1, "start", "db")[0]
    assert event["got"] is True and event["other"] is True and event["locked"] is True
    assert event["one"] == 1 and event["released"] is True
    assert event["run"] == 1 and event["generation"] is None


def test_run_refuses_a_config_value_that_runs_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}})
    cfg.write_text(cfg.read_text().replace('"a": {', '"a": {,'))
    result = cli(tmp_path, "-c", str(cfg), "run")
    assert result.returncode == 2
    assert "invalid JSON at line 2" in result.stderr and "cannot start" in result.stderr


def test_bad_server_name_is_a_usage_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}})
    result = cli(tmp_path, "-c", str(cfg), "--server-name", "x" * 300, "run")
    assert result.returncode == 2 and "--server-name must be 1 to 255 characters" in result.stderr


def test_a_bad_diagnostic_knob_refuses_the_start(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}})
    for name, value, message in (
            ("PANDA_DAEMON_LATE_FLOOR", "0", "PANDA_DAEMON_LATE_FLOOR must be a positive number"
                                             " of seconds, got: '0'"),
            ("PANDA_DAEMON_CLOCK_OFFSET", "soon", "PANDA_DAEMON_CLOCK_OFFSET must be a number of"
                                                  " seconds, got: 'soon'")):
        env = script_env(tmp_path / "record.jsonl", **{name: value})
        result = cli(tmp_path, "-c", str(cfg), "run", env=env)
        assert result.returncode == 2 and f"cannot start: {message}" in result.stderr
        assert not (tmp_path / "record.jsonl").exists()


def test_status_reports_a_master_started_with_run(tmp_path: Path) -> None:
    """`run` holds no pid file, but writes its status file: `status` finds it there (exit
    0, as for a running service) and says how to stop it."""
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}})
    pidfile = str(tmp_path / "run" / "panda-daemon.pid")
    before = cli(tmp_path, "-c", str(cfg), "status", "--pidfile", pidfile)
    assert before.returncode == 3 and "not running (no pid file" in before.stdout
    with running_master(cfg, tmp_path, server="fg") as master:
        master.wait_events(1, "end", "tick")
        shown = wait_for(lambda: (r := cli(tmp_path, "-c", str(cfg), "status", "--pidfile",
                                           pidfile)).returncode == 0 and r, 15,
                         "status to find the foreground master")
        assert (f"running in the foreground (started with `run`, so it holds no pid file;"
                f" {pidfile} is not its): master pid {master.proc.pid}, server fg") in (
            shown.stdout), shown.stdout
        assert f"kill -TERM {master.proc.pid}" in shown.stdout
        assert "master fg" in shown.stdout and "tick" in shown.stdout
        assert master.stop() == 0
    after = cli(tmp_path, "-c", str(cfg), "status", "--pidfile", pidfile)
    assert after.returncode == 3, after.stdout


def test_a_commands_own_log_records_name_the_command_not_a_master(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.cfg"
    cfg.write_text("[daemon\n")
    checked = cli(tmp_path, "-c", str(cfg), "check-config")
    assert checked.returncode == 2
    assert re.search(r" ERROR check-config pid \d+ panda\.cli: .*cannot parse", checked.stderr), (
        checked.stderr)
    assert "master pid" not in checked.stderr
    run = cli(tmp_path, "-c", str(cfg), "run")  # a master's records say master
    assert run.returncode == 2
    assert re.search(r" ERROR master pid \d+ panda\.cli: .*cannot parse", run.stderr), run.stderr

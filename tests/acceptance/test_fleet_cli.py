"""``panda-daemon fleet`` (and ``--check`` exit codes) over real masters, and
``panda-daemon logs`` over the worker log of a real master started as a service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from harness import FIXTURES, REPO, pid_alive, running_master, script_env, wait_for, write_config
from pg import url_text
from sqlalchemy import URL

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3


def cli(cfg: Path, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env or script_env(cfg.parent / "cli.jsonl"))


def test_fleet_shows_real_masters_on_postgresql_and_check_is_ok(tmp_path: Path,
                                                                 pg_url: URL) -> None:
    scripts = {"shared": {"module": "record", "period": 0.5, "sync": True},
               "local": {"module": "record", "period": 0.5}}
    cfg = write_config(tmp_path, scripts, db_url=url_text(pg_url), heartbeat_interval=1)
    upgrade = cli(cfg, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    with ExitStack() as stack:
        masters = [stack.enter_context(running_master(cfg, tmp_path, server=name))
                   for name in ("east", "west")]

        def both_ran() -> Any:
            data = json.loads(cli(cfg, "fleet", "--json").stdout)
            local = next(s for s in data["scripts"] if s["name"] == "local")
            return len(data["servers"]) == 2 and len(local["runs"]) == 2 and data

        data = wait_for(both_ran, 30, lambda: f"both masters' runs\n{masters[0].log()[-2000:]}")
        assert data["summary"] == {"stale": [], "late": [], "config_mismatch": [],
                                   "silent_servers": [], "paused": [],
                                   "draining_servers": [], "crash_looping": {},
                                   "log_failing": []}
        assert {s["server"] for s in data["servers"]} == {"east", "west"}
        assert {m["server"]: m["workers_alive"] for m in data["local_masters"]} == {
            "east": 2, "west": 2}
        text = cli(cfg, "fleet")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert any(line.startswith("east") and " alive " in line for line in lines)
        assert any(line.startswith("shared") and " yes " in line for line in lines)
        check = cli(cfg, "fleet", "--check")
        assert check.returncode == OK, check.stdout
        assert check.stdout.startswith("OK: 0 stale, 0 late of 2 scripts; 2 of 2 servers alive")


def test_fleet_check_critical_for_a_stale_script_warning_for_config_mismatch(
        tmp_path: Path) -> None:
    url = URL.create("sqlite", database=str(tmp_path / "fleet.sqlite"))
    scripts = {"good": {"module": "record", "period": 0.4},
               "broken": {"module": "fail", "period": 0.4}}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = write_config(tmp_path / "a", scripts, db_url=str(url), heartbeat_interval=1)
    cfg_b = write_config(tmp_path / "b", scripts, db_url=str(url), heartbeat_interval=1,
                         n_proc=3)  # another configuration
    with running_master(cfg_a, tmp_path / "a", server="a"), \
            running_master(cfg_b, tmp_path / "b", server="b"):
        # "broken" never succeeds: stale 3 x 0.4 s after its first run
        check = wait_for(lambda: (r := cli(cfg_a, "fleet", "--check")).returncode == CRITICAL
                         and r, 30, "fleet --check to report the stale script")
        lines = check.stdout.splitlines()
        assert lines[0].startswith("CRITICAL: 1 stale, 0 late of 2 scripts")
        assert "stale: broken (never a successful run anywhere, limit 3 x 400ms)" in lines
        assert {"config differs: a", "config differs: b"} <= {line.split(" (")[0]
                                                              for line in lines}
        relaxed = cli(cfg_a, "fleet", "--check", "--stale-factor", "1000")
        assert relaxed.returncode == WARNING, relaxed.stdout
        assert relaxed.stdout.startswith("WARNING: 0 stale, 0 late of 2 scripts")
        section = cfg_a.read_text() + "[daemon_web]\nstale_factor = 1000\n"
        cfg_a.write_text(section, encoding="utf-8")  # the file's k, as the pages use it
        assert cli(cfg_a, "fleet", "--check").returncode == WARNING
        bad = cli(cfg_a, "fleet", "--check", "--stale-factor", "0.5")
        assert bad.returncode == 2 and "--stale-factor" in bad.stderr  # argparse: usage error
        # paused fleet-wide, "broken" is expected not to run: not stale, and said so
        cfg_a.write_text(section.replace("stale_factor = 1000", "stale_factor = 3"))
        paused = cli(cfg_a, "pause", "broken")
        assert paused.returncode == 0, paused.stdout + paused.stderr
        check = cli(cfg_a, "fleet", "--check")
        assert check.returncode == WARNING, check.stdout  # the config mismatch only
        lines = check.stdout.splitlines()
        assert lines[0].startswith("WARNING: 0 stale, 0 late, 1 paused of 2 scripts"), lines
        assert "paused: broken (fleet-wide; not judged stale or late)" in lines
        assert not [line for line in lines if line.startswith("stale:")]


def test_fleet_check_unknown_when_the_database_cannot_be_read(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://panda:s3cret-pw@127.0.0.1:9/panda"
    cfg = write_config(tmp_path, {"x": {"module": "record", "period": 1}}, db_url=url)
    check = cli(cfg, "fleet", "--check")
    assert check.returncode == UNKNOWN
    assert check.stdout.startswith("UNKNOWN: database postgresql+psycopg2://panda:***@")
    plain = cli(cfg, "fleet")
    assert plain.returncode == 9 and "panda:***@127.0.0.1:9" in plain.stderr
    assert "s3cret-pw" not in check.stdout + plain.stdout + plain.stderr


def test_logs_shows_one_scripts_records_from_the_worker_log(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    scripts = {"quick": {"module": "record", "period": 0.3},
               "broken": {"module": "fail", "period": 0.3}}
    cfg = write_config(tmp_path, scripts, stop_grace=2,
                       extra=f"[server]\nlogdir = {logdir}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANDA_")}
    env.update(PYTHONPATH=os.pathsep.join([str(FIXTURES), str(REPO)]), PANDA_NO_ROOT="1",
               PANDA_LOCK_DIR=str(tmp_path / "run"), PANDA_DAEMON_STATE_DIR=str(tmp_path / "st"),
               PANDA_TEST_RECORD=str(tmp_path / "record.jsonl"), PYTHONUNBUFFERED="1")
    started = cli(cfg, "start", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int(started.stdout.split("master pid ")[1].split()[0])
    try:
        worker_log = logdir / "panda-daemons.log"
        wait_for(lambda: worker_log.exists() and worker_log.read_text().count("[broken run") >= 3
                 and worker_log.read_text().count("hello from quick") >= 3, 30,
                 "records of both scripts in the worker log")
        quick = cli(cfg, "logs", "quick", "--lines", "2", env=env)
        assert quick.returncode == 0, quick.stderr
        records = [line for line in quick.stdout.splitlines() if line.strip()]
        assert len(records) == 2
        assert all("[quick run " in line and "hello from quick" in line for line in records)
        broken = cli(cfg, "logs", "broken", "--lines", "1", env=env)
        assert broken.returncode == 0, broken.stderr
        out = broken.stdout.splitlines()
        assert "[broken run " in out[0] and "quick" not in broken.stdout
        assert out[-1].startswith("RuntimeError: deliberate failure")  # its traceback came along
        grep = cli(cfg, "logs", "broken", "--grep", "RuntimeError", "--lines", "100", env=env)
        assert grep.returncode == 0 and "[quick run" not in grep.stdout
        assert grep.stdout.count("[broken run ") >= 3
        none = cli(cfg, "logs", "quick", "--grep", "no such text anywhere", env=env)
        assert none.returncode == 1 and "no log records of quick" in none.stderr
        missing = cli(cfg, "logs", "quick", "--file", str(tmp_path / "nope.log"), env=env)
        assert missing.returncode == 1 and "cannot read the worker log" in missing.stderr
    finally:
        stopped = cli(cfg, "stop", env=env)
        if pid_alive(pid):
            for proc in psutil.Process(pid).children(recursive=True):
                proc.kill()
            os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not pid_alive(pid)


def test_operator_commands_refuse_a_server_the_fleet_never_saw_and_say_where_they_act(
        tmp_path: Path) -> None:
    url = URL.create("sqlite", database=str(tmp_path / "fleet.sqlite"))
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 0.5}},
                       db_url=str(url), heartbeat_interval=1, command_interval=1)
    with running_master(cfg, tmp_path, server="alpha") as master:
        wait_for(lambda: "alpha" in cli(cfg, "fleet").stdout, 30, "alpha's heartbeat")
        for argv in (["pause", "tick", "--server", "alpah"], ["drain", "alpah"],
                     ["run-now", "tick", "--server", "alpah"]):
            typo = cli(cfg, *argv)
            assert typo.returncode == 2, typo.stdout + typo.stderr
            assert ("no server 'alpah' has ever run on this database (did you mean"
                    ' "alpha"?); known servers: alpha. Nothing was recorded') in typo.stderr
        listing = cli(cfg, "commands").stdout  # no command recorded, no hold left behind
        assert "in force: nothing paused or drained" in listing and "alpah" not in listing
        forced = cli(cfg, "pause", "tick", "--server", "newbox", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "no new run of it starts on newbox" in forced.stdout
        assert "note: newbox is not live now; it acts when it runs again" in forced.stdout
        # written through sqlite3 (no SQLAlchemy on a SQLite file), acted on by the master
        fleet_wide = cli(cfg, "pause", "tick", "--wait", "--timeout", "30")
        assert fleet_wide.returncode == 0, fleet_wide.stdout + fleet_wide.stderr
        assert "no new run of it starts on any server; a run in progress finishes" in (
            fleet_wide.stdout)
        assert "  alpha: paused (at " in fleet_wide.stdout
        extra = cli(cfg, "run-now", "tick")
        assert "one extra run, on the first server that takes it\n" in extra.stdout
        on_alpha = cli(cfg, "resume", "tick", "--server", "alpha")
        assert on_alpha.returncode == 0 and "it is scheduled again on alpha" in on_alpha.stdout
        assert master.stop() == 0

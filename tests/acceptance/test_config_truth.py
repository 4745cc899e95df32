"""check-config tells the truth, with real masters: what it accepts runs, what it refuses
``run`` refuses with the same status; a running master's reload refuses what cannot run and
says what needs a restart; no output, log or status file shows a planted secret.

Every master is bounded: it is stopped (and its processes checked gone) by
``running_master``, and ``run`` on a config that should refuse has a timeout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from harness import REPO, running_master, script_env, wait_for, write_config
from sqlalchemy import text

from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.schema import upgrade

SECRET = "Pl4ntedPw77"


def cli(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pandaserver.commands.main", *args], capture_output=True, text=True,
        timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL,
        env=script_env(tmp_path / "record.jsonl"))


def everything_written(root: Path) -> str:
    """Every file under ``root`` (logs, status files, configs excluded), as text."""
    parts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix not in (".cfg", ".sqlite", ".sqlite-wal",
                                                  ".sqlite-shm"):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


def test_a_running_master_never_shows_a_secret_and_says_its_leases_are_local(
        tmp_path: Path) -> None:
    scripts = {"tick": {"module": "record", "period": 0.3},
               "shared": {"module": "record", "period": 0.3, "sync": True}}
    cfg = write_config(tmp_path, scripts, db_ulr=f"postgresql://panda:{SECRET}/x@db/panda",
                       db_pwd=SECRET)
    check = cli(tmp_path, "-c", str(cfg), "check-config")
    assert check.returncode == 2, check.stdout  # two unknown keys: problems, not errors
    assert "verdict: run starts 2 script(s)" in check.stdout
    with running_master(cfg, tmp_path) as master:
        master.wait_events(2, "end", "shared")
        master.wait_log("sync scripts (shared) are exclusive on this host only")
        master.wait_log("key 'db_ulr': unknown key (value 'postgresql://panda:***@db/panda'")
        assert master.stop() == 0
        log = master.log()
    written = everything_written(tmp_path)
    assert "status-test-server.json" in str(list((tmp_path / "state").iterdir()))
    for output in (check.stdout, check.stderr, log, written):
        assert SECRET not in output


def test_check_config_and_run_agree_on_a_newer_schema(tmp_path: Path) -> None:
    """A config that is valid on paper but names a database run refuses: check-config
    --connect says so with run's exit status (8); plain check-config cannot know."""
    database = tmp_path / "db" / "panda.sqlite"
    database.parent.mkdir()
    engine = engine_from_url(f"sqlite:///{database}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE daemon_schema SET version_num = '9999_future'"))
    engine.dispose()
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}},
                       db_url=f"sqlite:///{database}")
    assert cli(tmp_path, "-c", str(cfg), "check-config").returncode == 0
    connected = cli(tmp_path, "-c", str(cfg), "check-config", "--connect")
    assert connected.returncode == 8, connected.stdout
    assert "database schema 9999_future is newer" in connected.stdout
    run = cli(tmp_path, "-c", str(cfg), "run", timeout=60)  # refuses before any worker
    assert run.returncode == 8, run.stderr
    assert "9999_future is newer" in run.stderr


def test_reload_refuses_what_cannot_run_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    scripts = {"tick": {"module": "record", "period": 0.3}}
    first = f"sqlite:///{tmp_path / 'one.sqlite'}"
    cfg = write_config(tmp_path, scripts, db_url=first)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "end", "tick")
        # the reload command refuses a package that does not import, and signals nothing
        write_config(tmp_path, scripts, db_url=first, package="no_such_package_x")
        env = script_env(tmp_path / "record.jsonl")
        refused = subprocess.run(
            [sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg), "reload", "--pidfile",
             str(tmp_path / "none.pid")], capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "package 'no_such_package_x' does not import" in refused.stderr
        assert "not reloading" in refused.stderr
        # a bare SIGHUP: the master validates the same way and keeps its configuration
        master.signal(signal.SIGHUP)
        master.wait_log("reload refused, keeping the running configuration")
        assert "package 'no_such_package_x' does not import" in master.log()
        ended = len(master.events("end", "tick"))
        master.wait_events(ended + 2, "end", "tick")  # still running its scripts
        # a new database (with a password) and a new user cannot be applied live
        write_config(tmp_path, {**scripts, "new": {"module": "record", "period": 0.3}},
                     db_url=f"postgresql+psycopg2://panda:{SECRET}@127.0.0.1:1/panda",
                     uname="nobody")
        master.signal(signal.SIGHUP)
        master.wait_log("reload: configuration applied except what needs a restart")
        log = master.log()
        assert "reload: NOT applied, needs a restart: the database (the master keeps" in log
        assert "configured: postgresql+psycopg2://panda:***@127.0.0.1:1/panda" in log
        assert "reload: NOT applied, needs a restart: uname/gname" in log
        assert "reload: configuration applied (" not in log
        master.wait_events(1, "end", "new")  # what could be applied was
        assert master.stop() == 0
        assert SECRET not in master.log()


def test_workers_stay_on_the_masters_database_after_a_reload_changed_it(
        tmp_path: Path) -> None:
    """A database changed by a reload needs a restart: the master keeps its own, and so do
    the scripts' ``tbuf`` in the workers it starts meanwhile (not the file's new one)."""
    scripts = {"where": {"module": "dbwhere", "period": 0.3, "timeout": 60}}
    first, second = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    cfg = write_config(tmp_path, scripts, db_url=f"sqlite:///{first}", n_proc=1,
                       proc_lifetime=3)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "where")
        write_config(tmp_path, scripts, db_url=f"sqlite:///{second}", n_proc=1,
                     proc_lifetime=3)
        master.signal(signal.SIGHUP)
        master.wait_log("reload: configuration applied except what needs a restart")
        reloaded = len(master.events("start", "where"))
        # a worker lives 3 s: wait until runs come from workers started after the reload
        old_pids = {e["pid"] for e in master.events("start", "where")}
        wait_for(lambda: len({e["pid"] for e in master.events("start", "where")[reloaded:]}
                             - old_pids) >= 2, timeout=60, what="runs in new workers")
        assert master.stop() == 0
    seen = {e["database"] for e in master.events("start", "where")}
    assert seen == {str(first)}, seen


def test_the_workers_log_lines_hide_the_configurations_secrets(tmp_path: Path) -> None:
    """What a script prints or logs goes through the worker's log: a secret of the
    master's configuration is masked there too (the worker gets them with its init)."""
    cfg = write_config(tmp_path, {"echo": {"module": "echo", "period": 60,
                                           "arguments": [f"token={SECRET}x", SECRET]}},
                       extra=f"[server]\napi_token = {SECRET}\n")
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "end", "echo")
        master.wait_log("echo logs")
        assert master.stop() == 0
    log = master.log()
    assert "echo says token=*** ***" in log, log
    assert "echo logs token=*** ***" in log, log
    assert SECRET not in log


def test_a_positional_password_argument_is_hidden_in_the_scripts_labelled_output(
        tmp_path: Path) -> None:
    """``--password VALUE`` in a script's arguments: the value is a secret wherever the
    script prints, logs or writes it (its fd 2 too), and in check-config's table."""
    cfg = write_config(tmp_path, {"echo": {"module": "echo", "period": 60,
                                           "arguments": ["--password", SECRET, "--verbose"]}})
    check = cli(tmp_path, "-c", str(cfg), "check-config")
    assert check.returncode == 0, check.stdout
    assert "--password *** --verbose" in check.stdout
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "end", "echo")
        master.wait_log("echo writes")
        assert master.stop() == 0
    log = master.log()
    for verb in ("says", "logs", "writes"):
        assert f"echo {verb} --password *** --verbose" in log, log
    assert SECRET not in log + check.stdout + check.stderr


def test_fleet_says_sync_leases_are_local_to_this_host(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"shared": {"module": "record", "period": 60, "sync": True}})
    assert cli(tmp_path, "-c", str(cfg), "db", "upgrade").returncode == 0
    fleet = cli(tmp_path, "-c", str(cfg), "fleet")
    assert fleet.returncode == 0, fleet.stderr
    assert "WARNING:" in fleet.stdout
    assert "sync scripts (shared) are exclusive on this host only" in fleet.stdout


def test_start_logs_problems_without_secrets(tmp_path: Path) -> None:
    """start with a mistyped key holding a password: the log files never show it."""
    logdir = tmp_path / "logs"
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 0.3}}, stop_grace=2,
                       db_ulr=f"postgresql://u:{SECRET}@h/db",
                       extra=f"[server]\nlogdir = {logdir}\n")
    env = script_env(tmp_path / "record.jsonl", PANDA_LOCK_DIR=str(tmp_path / "run"))
    pidfile = tmp_path / "run" / "panda_daemon.pid"

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pandaserver.commands.main", "-c", str(cfg), *args,
                               "--pidfile", str(pidfile)], capture_output=True, text=True,
                              timeout=90, env=env, cwd="/", stdin=subprocess.DEVNULL)

    started = command("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        stdout_log = logdir / "panda_daemon_stdout.log"
        wait_for(lambda: stdout_log.exists() and "key 'db_ulr'" in stdout_log.read_text(),
                 30, "the unknown key in panda_daemon_stdout.log")
    finally:
        stopped = command("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    for output in (started.stdout, started.stderr, stopped.stdout, everything_written(tmp_path)):
        assert SECRET not in output


def test_bundled_example_is_clean_on_one_host(tmp_path: Path) -> None:
    """The quick start's config warns about nothing on the host it runs on: no sync script
    on the local SQLite file, no account that may not exist."""
    result = cli(tmp_path, "-c", str(REPO / "etc" / "panda_server.cfg"), "check-config")
    assert result.returncode == 0, result.stdout
    assert "\nno problems\n" in result.stdout, result.stdout
    assert "warning(s)" not in result.stdout and "error(s)" not in result.stdout
    assert "verdict: run starts 3 script(s) on 2 worker(s); start starts 3 script(s)" in (
        result.stdout)


def test_an_empty_config_is_refused_by_check_config_run_and_reload(tmp_path: Path) -> None:
    """``config = {}`` would run nothing (or, on reload, remove every script): refused."""
    cfg = write_config(tmp_path, {})
    assert "config = {}" in cfg.read_text()
    check = cli(tmp_path, "-c", str(cfg), "check-config")
    assert check.returncode == 2, check.stdout
    assert "key 'config': is an empty object ({}): no scripts will run" in check.stdout
    assert "verdict: run refuses to start (exit 2); start refuses to start (exit 2)" \
        in check.stdout
    run = cli(tmp_path, "-c", str(cfg), "run")
    assert run.returncode == 2, run.stderr
    assert "is an empty object ({})" in run.stderr and "master started" not in run.stderr
    scripts = {"tick": {"module": "record", "period": 0.3}}
    write_config(tmp_path, scripts)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "end", "tick")
        write_config(tmp_path, {})
        refused = cli(tmp_path, "-c", str(cfg), "reload", "--pidfile", str(tmp_path / "none.pid"))
        assert refused.returncode == 2, refused.stderr
        assert "is an empty object ({})" in refused.stderr and "not reloading" in refused.stderr
        master.signal(signal.SIGHUP)  # the master itself refuses it too
        master.wait_log("reload refused, keeping the running configuration")
        assert "is an empty object ({})" in master.log()
        ended = len(master.events("end", "tick"))
        master.wait_events(ended + 2, "end", "tick")  # tick was not removed
        assert master.stop() == 0


def test_scripts_whose_module_does_not_import_are_not_counted_as_running(
        tmp_path: Path) -> None:
    """check-config and run count what runs; a script whose module does not import waits
    for it, said once by the preflight, not once more by the master."""
    scripts = {"tick": {"module": "record", "period": 0.3},
               "gone": {"module": "no_such_module_q", "period": 0.3}}
    cfg = write_config(tmp_path, scripts, n_proc=1)
    check = cli(tmp_path, "-c", str(cfg), "check-config")
    assert check.returncode == 2, check.stdout  # a problem: the script is left out
    assert ("verdict: run starts 1 script(s) on 1 worker(s); start starts 1 script(s) on 1"
            " worker(s); 1 more script(s) (gone) wait until their module imports") \
        in check.stdout
    with running_master(cfg, tmp_path) as master:
        master.wait_events(3, "end", "tick")
        assert master.stop() == 0
        log = master.log()
    assert "1 scripts (1 more wait until their module imports), 1 workers" in log
    assert log.count("cannot import testscripts.no_such_module_q") == 1, log
    assert "will not run" not in log
    assert master.events("start", "gone") == []


def test_a_database_that_refuses_check_config_connect_is_not_a_verdict_that_run_starts(
        tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}},
                       db_url=f"postgresql+psycopg2://panda:{SECRET}@127.0.0.1:1/panda")
    check = cli(tmp_path, "-c", str(cfg), "check-config", "--connect")
    assert check.returncode == 9, check.stdout
    assert "1 error(s): the database did not accept the connection (run and start would" \
           " start and wait for it)" in check.stdout
    assert "what run or start refuses to start with" not in check.stdout
    verdict = next(x for x in check.stdout.splitlines() if x.startswith("verdict:"))
    assert verdict.startswith("verdict: check-config refuses (exit 9): the database did not"
                              " accept the connection (above); as it is, run starts 1"
                              " script(s)"), verdict
    assert verdict.endswith("no sync script runs and no history is recorded until it does")
    assert SECRET not in check.stdout + check.stderr

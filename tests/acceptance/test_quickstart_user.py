"""The README's quick start as an unprivileged user whose HOME does not exist (``nobody``,
HOME=/nonexistent): every command either runs or exits with one line naming the path and
how to choose another; check-config and run agree; never a traceback."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import FIXTURES, REPO, wait_for
from servicekit import python_for

STATE_LINE = ("the SQLite database /nonexistent/.local/state/panda-daemon/panda_daemon.sqlite"
              " (no database is configured: the default, in the state directory under"
              " HOME=/nonexistent) cannot be created: this user (uid {uid}) cannot create"
              " /nonexistent in /; choose another place: PANDA_DAEMON_STATE_DIR=DIR in the"
              " environment (a directory this user can write), or [daemon] db_url ="
              " sqlite:////DIR/panda_daemon.sqlite")


@dataclass
class Nobody:
    root: Path
    uid: int
    gid: int
    python: str
    pythonpath: str

    @property
    def config(self) -> Path:
        return self.root / "panda_server.cfg"

    def env(self, **extra: str) -> dict[str, str]:
        # what `su -s /bin/sh nobody` gives: HOME=/nonexistent, nothing of ours but the path
        return {"HOME": "/nonexistent", "PATH": "/usr/bin:/bin", "PYTHONPATH": self.pythonpath,
                "LANG": "C.UTF-8", **extra}

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "pandaserver.commands.main", "-c", str(self.config), *args]

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), env=self.env(**extra), user=self.uid,
                              group=self.gid, extra_groups=[], cwd=self.root, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    if os.geteuid() != 0:
        pytest.skip("running commands as nobody needs root")
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    assert not Path("/nonexistent").exists(), "nobody's HOME exists on this host"
    path = [str(FIXTURES), str(REPO), sysconfig.get_paths()["purelib"]]
    python = python_for(uid, gid, path)
    root = Path(tempfile.mkdtemp(prefix="panda-quickstart-"))  # not under pytest's 0700 tmp
    try:
        root.chmod(0o755)
        # the quick start's config as it is, but for its log directory (in /tmp, where an
        # earlier root run may have left it owned by root)
        text = (REPO / "etc" / "panda_server.cfg").read_text(encoding="utf-8")
        assert "logdir = /tmp/panda-daemon-logs" in text
        (root / "panda_server.cfg").write_text(
            text.replace("/tmp/panda-daemon-logs", str(root / "logs")), encoding="utf-8")
        (root / "panda_server.cfg").chmod(0o644)
        (root / "logs").mkdir()
        os.chown(root / "logs", uid, gid)
        yield Nobody(root, uid, gid, python, os.pathsep.join(path))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def one_line(output: str) -> None:
    assert "Traceback" not in output and "PermissionError" not in output, output


def test_no_writable_home_check_config_run_and_history_agree_in_one_line(
        nobody: Nobody) -> None:
    expected = STATE_LINE.format(uid=nobody.uid)
    check = nobody.cli("check-config")
    assert check.returncode == 2, check.stdout + check.stderr
    assert expected in check.stdout
    assert "verdict: run refuses to start (exit 2); start refuses to start (exit 2)" \
        in check.stdout
    one_line(check.stdout + check.stderr)
    for args in (("check-config", "--connect"), ("run",), ("history",),
                 ("run-once", "dummy_test")):
        result = nobody.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert expected in result.stdout + result.stderr, (args, result.stderr)
        one_line(result.stdout + result.stderr)


def test_start_says_how_to_choose_another_pid_file(nobody: Nobody) -> None:
    state = nobody.root / "state"
    state.mkdir()
    os.chown(state, nobody.uid, nobody.gid)
    locked = nobody.root / "root-only"  # the user cannot create a directory in it
    locked.mkdir(mode=0o755)
    result = nobody.cli("start", PANDA_DAEMON_STATE_DIR=str(state),
                        PANDA_LOCK_DIR=str(locked / "panda"))
    assert result.returncode == 5, result.stderr
    assert (f"cannot create the directory {locked / 'panda'}: Permission denied; choose another"
            " pid file: --pidfile FILE, or PANDA_LOCK_DIR=DIR in the environment") \
        in result.stderr
    one_line(result.stdout + result.stderr)


def test_with_a_state_directory_it_can_write_the_quick_start_runs(nobody: Nobody) -> None:
    state = nobody.root / "state"
    state.mkdir()
    os.chown(state, nobody.uid, nobody.gid)
    check = nobody.cli("check-config", PANDA_DAEMON_STATE_DIR=str(state))
    assert "verdict: run starts 3 script(s) on 2 worker(s)" in check.stdout, check.stdout
    log = nobody.root / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(nobody.command("run"), env=nobody.env(
            PANDA_DAEMON_STATE_DIR=str(state)), user=nobody.uid, group=nobody.gid,
            extra_groups=[], cwd=nobody.root, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "dummy_test run" in log.read_text() and "outcome=ok" in log.read_text(),
                 60, "a run of dummy_test as nobody")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "master started on" in text and f"uid={nobody.uid} " in text
    one_line(text)

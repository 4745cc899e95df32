"""The suite's own servers and processes end with it: a pytest killed by SIGTERM or SIGKILL
(a CI timeout) leaves no postgres, mariadbd, gunicorn, master, worker or script process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from guard import TOKEN_VAR, end_all, marked
from harness import FIXTURES, REPO, pid_alive, wait_for
from pg import SCRATCH_VAR


# alone: the child pytest starts a PostgreSQL cluster, a MariaDB server and a master of its
# own; in the parallel pass's first minutes, beside six workers starting theirs, it once did
# not get them up within its 240 s (tests/README.md)
@pytest.mark.alone
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_pytest_leaves_no_process(tmp_path: Path, sig: signal.Signals) -> None:
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_VAR, SCRATCH_VAR)}
    env["PANDA_HYGIENE_READY"] = str(ready)
    with (tmp_path / "pytest.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x",
             "-o", "timeout=600", str(FIXTURES / "hygiene_target.py")],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    info = None
    try:
        info = wait_for(lambda: ready.exists() and json.loads(ready.read_text()), 240,
                        "the child pytest to start its servers and a master\n"
                        + (tmp_path / "pytest.log").read_text(errors="replace")[-3000:])
        pids: dict[str, int] = info["pids"]
        assert all(pid_alive(pid) for pid in pids.values()), pids
        os.kill(child.pid, sig)
        child.wait(30)
        wait_for(lambda: not marked(TOKEN_VAR, info["token"]), 30,
                 "every process of the killed pytest to end")
        left = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        assert not left, f"left behind: {left}"
        assert not Path(info["scratch"]).exists(), "the servers' data directory was kept"
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)
        if info is not None:  # whatever the child's guard missed (the test has failed then)
            end_all(TOKEN_VAR, info["token"], grace=1)

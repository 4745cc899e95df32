"""A master that ends with a failure status leaves it in its pid file for ``stop``: the
pid stays readable on the first line, the status and reason on the second."""

from __future__ import annotations

import io
import os
from pathlib import Path

from pandaserver import exitcodes
from pandaserver.service import lifecycle
from pandaserver.service.pidfile import PidFile, exit_note, read_pid


def test_a_clean_exit_removes_the_pid_file(tmp_path: Path) -> None:
    pidfile = PidFile(tmp_path / "p.pid")
    pidfile.acquire()
    pidfile.release()
    assert not pidfile.path.exists()


def test_a_failure_status_stays_in_the_pid_file_and_stop_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "p.pid"
    pidfile = PidFile(path)
    pidfile.acquire()
    pidfile.release(exitcodes.RET_HISTORY_LOST, "history of 8 run(s)\n(8 write(s)): lost")
    assert read_pid(path) == os.getpid()
    assert exit_note(path) == (11, "history of 8 run(s) (8 write(s)): lost")
    again = PidFile(path)  # the next start replaces it, naming the old pid
    assert again.acquire() is None  # our own pid: not reported as stale
    again.release()
    pidfile = PidFile(path)
    pidfile.acquire()
    pidfile.release(exitcodes.RET_HISTORY_LOST, "history lost")
    out, err = io.StringIO(), io.StringIO()
    code = lifecycle.stop(path, 1.0, out, err)  # the master is gone: a stale file
    assert code == exitcodes.RET_HISTORY_LOST, out.getvalue() + err.getvalue()
    assert "removed the stale pid file" in out.getvalue()
    assert "the master exited with status 11: history lost" in err.getvalue()
    assert not path.exists()

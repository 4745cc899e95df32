"""Start one master for a benchmark: its config, its environment, its process.

The config runs the bundled benchmark scripts (``benchmarks/scripts_pkg/benchscripts``);
the master gets its own state directory (its SQLite file and status file: never the
machine's, whose schema a benchmark of another revision would migrate) and its own session
(so that a SIGKILL of its group ends everything it started).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def write_config(directory: Path, scripts: dict[str, dict[str, Any]], n_proc: int,
                 *settings: str) -> Path:
    """``directory/panda_server.cfg`` with ``scripts`` and ``[daemon]`` lines
    (``"stop_grace = 30"``) beyond ``enable``, ``package`` and ``n_proc``."""
    body = json.dumps(scripts, indent=4).splitlines()
    text = "\n".join(["[daemon]", "enable = True", "package = benchscripts",
                      f"n_proc = {n_proc}", *settings, "config = " + body[0],
                      *("    " + line for line in body[1:])])
    path = directory / "panda_server.cfg"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def start_master(cfg: Path, log: Path, state_dir: Path, name: str = "bench",
                 ) -> subprocess.Popen[bytes]:
    """``panda-daemon run`` of ``cfg`` as server ``name``, its output in ``log``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "scripts_pkg"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["PANDA_DAEMON_STATE_DIR"] = str(state_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
         "--server-name", name, "run"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

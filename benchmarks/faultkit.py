"""What the fault benchmarks share (benchmarks/faults.py, benchmarks/chaos.py): a fleet of
real masters on one database, the evidence their scripts leave, and the faults themselves
(a process tree killed; a server frozen or restarted: tests/dbfaults.py).

The masters are ``tests/harness.py``'s ``MasterProcess``; the scripts are the tests' own
(``record``, ``guarded`` in tests/fixtures/testscripts), which stamp their start (with run
id and lease generation), and for ``guarded`` the last moment their code ran and the
children of earlier runs alive at their start.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from harness import MasterProcess, script_env, wait_for, write_config  # noqa: E402
from pg import PgCluster, url_text  # noqa: E402
from sqlalchemy import URL  # noqa: E402

RUN_LINE = re.compile(r"panda\.master: (\w+) run (\d+) outcome=(\w+) duration=[-0-9.]+s"
                      r" delay=(-?[0-9.]+)s queued=(-?[0-9.]+)s")


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Fleet:
    """Masters on one database: one working directory (shared by the guarded script's
    evidence), one database; ``close`` stops them and kills anything left.

    A server may be started again (``start`` with a name already used, after a kill):
    the earlier incarnation's log is kept beside (``master-NAME.N.log``) and its events
    stay in the server's record file, which both incarnations append to."""

    def __init__(self, cluster: PgCluster, name: str) -> None:
        self.cluster = cluster
        self.url = cluster.create_database(name.replace("-", "_"))
        self.dir = Path(tempfile.mkdtemp(prefix=f"panda-faults-{name}-"))
        self.masters: dict[str, MasterProcess] = {}
        self.retired: list[tuple[str, MasterProcess]] = []
        self.configs: dict[str, Path] = {}
        self.upgraded = False
        self.stopped = False
        self.left: list[int] = []
        self.exit_codes: dict[str, int | None] = {}

    def config(self, server: str, scripts: dict[str, Any], url: URL | None = None,
               **daemon: Any) -> Path:
        where = self.dir / server
        where.mkdir()
        cfg = write_config(where, scripts, db_url=url_text(url or self.url), **daemon)
        if not self.upgraded:
            subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                            "db", "upgrade"], check=True, capture_output=True, timeout=120,
                           env=script_env(self.dir / "cli.jsonl"))
            self.upgraded = True
        self.configs[server] = cfg
        return cfg

    def start(self, server: str, cfg: Path | None = None) -> MasterProcess:
        old = self.masters.get(server)
        if old is not None:  # a new incarnation: the old one's log is kept beside
            self.left += old.cleanup()
            kept = old.log_path.with_name(f"master-{server}.{len(self.retired)}.log")
            old.log_path.rename(kept)
            old.log_path = kept
            self.retired.append((server, old))
        master = MasterProcess(cfg or self.configs[server], self.dir, server=server,
                               log_level="INFO")
        self.masters[server] = master
        return master

    def incarnations(self) -> list[tuple[str, MasterProcess]]:
        """Every master started, the earlier incarnations of a server first."""
        return [*self.retired, *self.masters.items()]

    def first_start(self, name: str, servers: list[str], timeout: float) -> str:
        """The server that starts ``name`` first (among ``servers``)."""
        found = wait_for(lambda: [s for s in servers if self.masters[s].events("start", name)],
                         timeout, f"a first run of {name}")
        return str(found[0])

    def stop(self) -> list[int]:
        """Stop every master (SIGTERM, then SIGKILL); return the pids that were left.
        ``exit_codes``: each server's last master's exit status (None: killed at 40 s)."""
        if self.stopped:
            return self.left
        self.stopped = True
        for master in self.masters.values():
            if master.proc.poll() is None:
                master.tree()
                master.signal(signal.SIGTERM)
        left: list[int] = list(self.left)
        for server, master in self.masters.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                master.proc.wait(40)
            self.exit_codes[server] = master.proc.poll()
            left += master.cleanup()
        for registry in self.dir.glob("*.pids"):  # the guarded script's children
            for pid in map(int, registry.read_text().split()):
                with contextlib.suppress(psutil.Error):
                    child = psutil.Process(pid)
                    if child.status() != psutil.STATUS_ZOMBIE:
                        left.append(pid)
                        child.kill()
        self.left = left
        return left

    # ----- what happened --------------------------------------------------------------------
    def starts(self, server: str, name: str) -> list[dict[str, Any]]:
        """Every start of ``name`` on ``server``, all incarnations (one record file)."""
        return self.masters[server].events("start", name)

    def runs(self, server: str, name: str, queued: bool = False) -> list[tuple[float, float]]:
        """(start, delay) of every ok run of ``name`` on ``server``, by start time; with
        ``queued``, (start, handed to a worker minus due time): for a sync run, the time
        its lease took."""
        master = self.masters[server]
        starts = {e["run"]: e["t"] for e in master.events("start", name)}
        found = []
        for match in RUN_LINE.finditer(master.log()):
            if match[1] == name and match[3] == "ok" and int(match[2]) in starts:
                found.append((float(starts[int(match[2])]), float(match[5 if queued else 4])))
        return sorted(found)

    def guarded_runs(self, name: str) -> list[dict[str, Any]]:
        """Every run of a guarded script on any master: server, start, the last moment its
        code ran, children of earlier runs alive at its start."""
        found = []
        for server, master in self.masters.items():
            for start in master.events("start", name):
                tick = self.dir / f"{name}-alive" / start["key"]
                last = float(tick.read_text()) if tick.exists() else start["t"]
                found.append({**start, "server": server, "last": max(last, start["t"])})
        return sorted(found, key=lambda r: r["t"])


@contextlib.contextmanager
def fleet_of(cluster: PgCluster, name: str, report: dict[str, Any],
             keep: bool = False) -> Iterator[Fleet]:
    fleet = Fleet(cluster, name)
    try:
        yield fleet
    finally:
        report["left_behind"] = fleet.stop()
        if keep:
            note(f"kept: {fleet.dir}")
        else:
            shutil.rmtree(fleet.dir, ignore_errors=True)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL of ``pid`` and every descendant (read before the kill); the pids killed."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    killed = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
            killed.append(proc.pid)
    return killed


def overlaps(found: list[dict[str, Any]]) -> list[str]:
    """Each moment two runs of one guarded script lived at once, said in a line: a run
    started while an earlier one's code still ran, or while its children were alive."""
    problems = [f"run {r['key']} on {r['server']} started with children of an earlier run"
                f" alive: {r['overlap']}" for r in found if r["overlap"]]
    for earlier, later in pairwise(found):
        if earlier["last"] > later["t"]:
            problems.append(f"{earlier['server']} ran until {earlier['last']:.3f} and"
                            f" {later['server']} started at {later['t']:.3f}"
                            f" ({earlier['last'] - later['t']:.3f} s together)")
    return problems

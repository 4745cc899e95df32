"""Faults of the tests' own database servers, the same on PostgreSQL and MariaDB: freeze
the server (SIGSTOP of its processes: it accepts and never answers) and restart it (every
connection cut, back on the same port with the same data). Used by
tests/acceptance/test_faults.py and the fault benchmarks (benchmarks/faultkit.py)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
from mysql import MariaDbServer
from pg import PgCluster
from sqlalchemy import URL


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP of ``pids`` (those still alive) for the block, SIGCONT after, whatever
    happens in it."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                proc.suspend()
                stopped.append(proc)
        yield
    finally:
        for proc in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()


def postgres_pids(cluster: PgCluster) -> list[int]:
    """The postmaster and every process below it (backends, background workers)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    return [postmaster, *(p.pid for p in psutil.Process(postmaster).children(recursive=True))]


def restart_postgres(cluster: PgCluster, down: float = 0.0) -> None:
    """``pg_ctl restart -m fast`` (every session ended), or with ``down`` seconds a fast
    stop, that long with no server, and a start with the same options on the same port;
    returns once it accepts connections."""
    pg_ctl = [*cluster._run_as, str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir),
              "-l", str(cluster.logfile), "-w", "-t", "60"]
    if down <= 0:
        _pg_ctl(pg_ctl, "-m", "fast", "restart")
    else:
        # the options the server was started with, as ``restart`` would reuse them
        words = shlex.split((cluster.datadir / "postmaster.opts").read_text())[1:]
        options = [w for i, w in enumerate(words)
                   if w != "-D" and (i == 0 or words[i - 1] != "-D")]
        _pg_ctl(pg_ctl, "-m", "fast", "stop")
        time.sleep(down)  # the outage itself
        _pg_ctl(pg_ctl, "-o", shlex.join(options), "start")
    cluster._wait_ready()


def _pg_ctl(command: list[str], *args: str) -> None:
    # -l in command: the new postmaster logs to its file, not to a pipe that never closes
    done = subprocess.run([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=90, check=False,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl {' '.join(args)} failed ({done.returncode}):"
                           f" {done.stderr.strip()}")


@dataclass
class ServerUnderTest:
    """One backend's server as a fault test sees it: a fresh database's URL, the port a
    proxy forwards to, the processes to freeze, and a restart."""

    backend: str  # "postgresql" or "mysql"
    url: URL
    port: int
    pids: Callable[[], list[int]]
    restart: Callable[[float], None]  # the seconds with no server between stop and start


def postgres_under_test(cluster: PgCluster, url: URL) -> ServerUnderTest:
    return ServerUnderTest("postgresql", url, cluster.port, lambda: postgres_pids(cluster),
                           lambda down: restart_postgres(cluster, down))


def mariadb_under_test(server: MariaDbServer, url: URL) -> ServerUnderTest:
    return ServerUnderTest("mysql", url, server.port, server.pids, server.restart)

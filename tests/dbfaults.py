"""Faults of the tests' own database servers, the same on PostgreSQL and MariaDB: freeze
the server (SIGSTOP of its processes: it accepts and never answers) and restart it (every
connection cut, back on the same port with the same data). Used by
tests/acceptance/test_faults.py and the fault benchmarks (benchmarks/faultkit.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
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


def restart_postgres(cluster: PgCluster) -> None:
    """``pg_ctl restart -m fast``: every session is ended, the server comes back with the
    same options on the same port; returns once it accepts connections."""
    # -l: the new postmaster logs to its file, not to a pipe that would then never close
    done = subprocess.run(
        [*cluster._run_as, str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir),
         "-l", str(cluster.logfile), "-m", "fast", "-w", "-t", "60", "restart"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=90, check=False,
        env={**os.environ, "LC_ALL": "C", "LANG": "C"})
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl restart failed ({done.returncode}): {done.stderr.strip()}")
    cluster._wait_ready()


@dataclass
class ServerUnderTest:
    """One backend's server as a fault test sees it: a fresh database's URL, the port a
    proxy forwards to, the processes to freeze, and a restart."""

    backend: str  # "postgresql" or "mysql"
    url: URL
    port: int
    pids: Callable[[], list[int]]
    restart: Callable[[], None]


def postgres_under_test(cluster: PgCluster, url: URL) -> ServerUnderTest:
    return ServerUnderTest("postgresql", url, cluster.port, lambda: postgres_pids(cluster),
                           lambda: restart_postgres(cluster))


def mariadb_under_test(server: MariaDbServer, url: URL) -> ServerUnderTest:
    return ServerUnderTest("mysql", url, server.port, server.pids, server.restart)

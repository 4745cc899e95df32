"""A streaming standby of a throwaway PostgreSQL primary (``tests/pg.py``), for failover tests.

``PgStandby(primary, via_port)``: ``pg_basebackup -R`` from the primary (through
``via_port``, a ``FaultProxy`` in front of the primary, when the test wants to cut the
replication stream: the standby then misses what the primary commits after the cut, as an
asynchronous standby does when its primary dies), started as a hot standby on a port of
its own, run as the same unprivileged user as the primary, stopped and removed like it.
Replication is asynchronous (initdb's defaults: ``wal_level = replica``, WAL senders, and a
``replication`` line in pg_hba.conf for 127.0.0.1). ``promote`` is ``pg_ctl promote``;
``kill_primary`` SIGKILLs the primary's postmaster and every backend.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import time
from typing import Any

import psutil
from pg import START_DEADLINE, PgCluster, PgUnavailable, free_port, scratch_dir


class PgStandby(PgCluster):
    def __init__(self, primary: PgCluster, via_port: int | None = None) -> None:
        super().__init__()
        self.primary = primary
        self.password = primary.password
        self.via_port = via_port or primary.port
        self.port = free_port()  # known before start: a URL may list it first

    def start(self) -> None:
        tool = self.bindir / "pg_basebackup"
        if not tool.is_file():
            raise PgUnavailable(f"{tool} not found")
        self.base = scratch_dir("panda-pgstandby-")
        self._run_as = list(self.primary._run_as)
        if self._run_as:
            user = pwd.getpwnam(self._run_as[2])
            os.chown(self.base, user.pw_uid, user.pw_gid)
        source = (f"host=127.0.0.1 port={self.via_port} user={self.superuser}"
                  f" password={self.password} application_name=standby")
        backup = self._run(str(tool), "-D", str(self.datadir), "-d", source, "-R",
                           "-X", "stream", "-c", "fast", "--no-sync")
        if backup.returncode != 0:
            raise PgUnavailable(f"pg_basebackup failed ({backup.returncode}):"
                                f" {backup.stderr.strip()}")
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
                   " -c hot_standby=on -c wal_receiver_status_interval=1")
        self._started = True
        started = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                            str(self.logfile), "-o", options, "-w", "-t",
                            str(int(START_DEADLINE)), "start", timeout=START_DEADLINE + 10)
        if started.returncode != 0:
            raise PgUnavailable(f"the standby did not start ({started.returncode}):"
                                f" {started.stderr.strip()}\n{self._log_tail()}")
        self._wait_ready()

    def replayed(self) -> str:
        """The last WAL position the standby replayed."""
        return str(self.sql("SELECT pg_last_wal_replay_lsn()")[0][0])

    def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        target = str(self.primary.sql("SELECT pg_current_wal_lsn()")[0][0])
        deadline = time.monotonic() + timeout
        while True:
            behind = self.sql(f"SELECT pg_last_wal_replay_lsn() < '{target}'::pg_lsn")[0][0]
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"the standby replayed {self.replayed()}, not {target},"
                                     f" in {timeout:g} s\n{self._log_tail()}")
            time.sleep(0.05)

    def promote(self) -> subprocess.CompletedProcess[str]:
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60",
                         "promote", timeout=70)
        if done.returncode != 0:
            raise AssertionError(f"pg_ctl promote failed: {done.stderr.strip()}\n"
                                 f"{self._log_tail()}")
        return done

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and all its processes at once (a crash)."""
        pid = int((self.primary.datadir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        procs: list[Any] = [postmaster, *postmaster.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)

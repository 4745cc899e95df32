"""A rolling upgrade of a fleet on PostgreSQL (docs/database.md, "Rolling upgrades"): the
previous release and this one share the database and two sync scripts, one server at a
time is restarted on the new code, and throughout no two runs of a script overlap, no gap
between runs is longer than one lease_ttl, and every run has its one history row.

The previous release is taken from this repository's history (``git archive`` of
``pandaserver/`` at PREVIOUS_RELEASE into a temporary directory, run from there with
PYTHONPATH in the same virtualenv): the commit that taught panda-daemon to run on a newer
schema recorded as compatible, before migration 0012. Releases older than it refuse any
newer schema by design, so the rule starts there. Without git history the test fails: it
cannot show what it is for.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from harness import FIXTURES, REPO, MasterProcess, script_env, wait_for, write_config
from pg import PgCluster, url_text
from pgfleet import cli, fleet_events
from sqlalchemy import URL

from pandaserver.daemons.fleet.rank import order
from pandaserver.db.base.schema import head_revision, known_revisions

# "schema: accept a newer schema recorded as working with this code (rolling upgrades)"
PREVIOUS_RELEASE = "8fabdab2fdcbd7069bb83eaa556f3d0033e12c52"
LEASE_TTL = 15.0  # the shortest allowed: the bound on gaps
PERIOD = 1.0
SERVERS = ("a", "b")
# two sync scripts, each preferred by one server (rendezvous hashing), so both servers run
# one while the fleet mixes releases
CANDIDATES = [f"job{i}" for i in range(20)]
ON = {server: next(n for n in CANDIDATES if order(n, SERVERS)[0] == server)
      for server in SERVERS}


def _previous_release(into: Path) -> Path:
    """``pandaserver/`` of PREVIOUS_RELEASE under ``into``; fails without git history."""
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e",
                            f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(f"commit {PREVIOUS_RELEASE} (the previous release) is not in the git"
                    f" history of {REPO} ({found.stderr.strip() or 'no git'}): this test"
                    " needs the repository's history (a full clone, not an export)")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar",
                              PREVIOUS_RELEASE, "pandaserver"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _env(old: Path | None, record: Path) -> dict[str, str]:
    """The environment of a master or command: the previous release's code when ``old``
    (PYTHONPATH first, and no current directory on sys.path: PYTHONSAFEPATH), else this
    checkout's."""
    if old is None:
        return script_env(record)
    return script_env(record, PYTHONPATH=os.pathsep.join([str(old), str(FIXTURES)]),
                      PYTHONSAFEPATH="1")


def _old_cli(old: Path, tmp_path: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                           *args], capture_output=True, text=True, timeout=60,
                          env=_env(old, tmp_path / "cli.jsonl"), stdin=subprocess.DEVNULL)


class Fleet:
    """Masters started and restarted by server name, each incarnation in its own directory
    (its log kept), on the previous release or this one."""

    def __init__(self, stack: ExitStack, cfg: Path, tmp_path: Path, old: Path) -> None:
        self.stack, self.cfg, self.tmp_path, self.old = stack, cfg, tmp_path, old
        self.all: list[MasterProcess] = []
        self.live: dict[str, MasterProcess] = {}

    def start(self, server: str, *, old: bool) -> MasterProcess:
        workdir = self.tmp_path / f"{server}{len(self.all)}"
        workdir.mkdir()
        env = _env(self.old if old else None, workdir / f"record-{server}.jsonl")
        master = MasterProcess(self.cfg, workdir, server=server, env=env)
        self.stack.callback(self._cleanup, master)
        self.all.append(master)
        self.live[server] = master
        return master

    @staticmethod
    def _cleanup(master: MasterProcess) -> None:
        left = master.cleanup()
        assert not left, f"processes left behind: {left}\n{master.log()[-3000:]}"

    def stop(self, server: str) -> None:
        master = self.live.pop(server)
        assert master.stop() == 0, master.log()[-3000:]

    def ends(self, script: str, master: MasterProcess | None = None) -> int:
        return len(fleet_events([master] if master else self.all, "end", script))

    def wait_runs(self, script: str, master: MasterProcess, more: int) -> None:
        target = self.ends(script, master) + more
        wait_for(lambda: self.ends(script, master) >= target, 60,
                 f"{more} more runs of {script} on {master.log_path.parent.name}")


def _history(pg_cluster: PgCluster, url: URL) -> list[tuple[str, int, str]]:
    conn = psycopg2.connect(**pg_cluster.dsn(str(url.database)))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT script, generation, outcome FROM daemon_run ORDER BY id")
            return [(str(s), int(g), str(o)) for s, g, o in cur.fetchall()]
    finally:
        conn.close()


def _check_runs(fleet: Fleet, script: str, history: list[tuple[str, int, str]]) -> int:
    """No overlap, no gap over LEASE_TTL, one `ok` history row per run: the run count."""
    runs = []  # (start, end, server, generation): a run's end is the next end of its worker
    for master in fleet.all:
        server = master.record.stem.removeprefix("record-")
        open_runs: dict[int, dict[str, Any]] = {}
        for event in master.events(name=script):
            if event["event"] == "start":
                open_runs[event["pid"]] = event
            else:
                start = open_runs.pop(event["pid"])
                runs.append((start["t"], event["t"], server, start["generation"]))
        assert not open_runs, f"{script}: a run did not end (every master stopped cleanly)"
    runs.sort()
    generations = [gen for _, _, _, gen in runs]
    assert len(set(generations)) == len(generations), f"{script}: a generation ran twice"
    for (_, end, server, gen), (start, _, nxt_server, nxt_gen) in pairwise(runs):
        assert start >= end, f"{script}: run {nxt_gen} on {nxt_server} started before run" \
                             f" {gen} on {server} ended"
        assert start - end <= LEASE_TTL, f"{script}: no run for {start - end:.1f} s between" \
                                         f" {gen} on {server} and {nxt_gen} on {nxt_server}"
    rows = [(g, o) for s, g, o in history if s == script]
    assert sorted(rows) == sorted((g, "ok") for g in generations), \
        f"{script}: history rows {rows} for runs {generations}"
    return len(runs)


def test_a_fleet_upgraded_one_server_at_a_time_never_runs_a_sync_script_twice(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    old = _previous_release(tmp_path / "previous")
    probe = subprocess.run(
        # the previous release's own module path (this release moved it to db/base/)
        [sys.executable, "-c", "import pandaserver.db.schema as s;"
         " print(s.__file__); print(s.head_revision())"],
        capture_output=True, text=True, check=True, env=_env(old, tmp_path / "probe.jsonl"),
        cwd=REPO)
    where, old_head = probe.stdout.split()
    assert where.startswith(str(old)), f"the previous release was not the code imported: {where}"
    assert old_head in known_revisions() and old_head != head_revision()

    scripts: dict[str, dict[str, Any]] = {
        name: {"module": "record", "period": PERIOD, "sync": True, "arguments": [0.2]}
        for name in ON.values()}
    cfg = write_config(tmp_path, scripts, db_url=url_text(pg_url), heartbeat_interval=1,
                       lease_ttl=LEASE_TTL, n_proc=1)
    created = _old_cli(old, tmp_path, cfg, "db", "upgrade")
    assert created.returncode == 0, created.stderr
    assert f"schema upgraded from nothing to {old_head}" in created.stdout

    with ExitStack() as stack:
        fleet = Fleet(stack, cfg, tmp_path, old)
        for server in SERVERS:
            fleet.start(server, old=True)
        for server in SERVERS:
            fleet.wait_runs(ON[server], fleet.live[server], 2)

        # 1. the schema first, while the previous release runs
        upgraded = cli(tmp_path, cfg, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"schema upgraded from {old_head} to {head_revision()}" in upgraded.stdout
        assert f"works with panda-daemon code of schema {known_revisions()[-1]} to" \
               f" {head_revision()}" in upgraded.stdout
        for server in SERVERS:  # it went on meanwhile
            fleet.wait_runs(ON[server], fleet.live[server], 2)

        # 2. a server of the previous release restarted as it is: it runs on the new schema
        fleet.stop("a")
        a_old = fleet.start("a", old=True)
        a_old.wait_log(f"database schema {head_revision()} is newer than this panda-daemon"
                       f" (head {old_head}) and records that it works with it", timeout=30)
        fleet.wait_runs(ON["a"], a_old, 2)

        # 3. one server at a time onto the new release, the other still on the previous one
        fleet.stop("b")
        b_new = fleet.start("b", old=False)
        fleet.wait_runs(ON["b"], b_new, 2)
        fleet.wait_runs(ON["a"], a_old, 2)  # both releases at once
        fleet.stop("a")
        a_new = fleet.start("a", old=False)
        fleet.wait_runs(ON["a"], a_new, 2)
        fleet.wait_runs(ON["b"], b_new, 2)
        assert "is newer than this panda-daemon" not in a_new.log()
        for server in SERVERS:
            fleet.stop(server)

    history = _history(pg_cluster, pg_url)
    for server in SERVERS:
        assert _check_runs(fleet, ON[server], history) >= 12
    assert {o for _, _, o in history} == {"ok"}, "a run left open or lost"

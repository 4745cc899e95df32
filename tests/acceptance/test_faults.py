"""Fleet guarantees under the faults that would break them, injected for real.

Masters share one real PostgreSQL; one of them may reach it through a ``FaultProxy`` that
partitions it (silence, not errors), the database itself may be frozen with SIGSTOP or
restarted, and masters are killed with SIGKILL or frozen with SIGSTOP. The faults whose
handling depends on the database and its driver (a partitioned holder, kill -9 of the
holder, the database frozen, the database restarted) run on MariaDB too (the ``db``
fixture: tests/dbfaults.py); the others, which only the masters see, on PostgreSQL.
Sync runs use the ``guarded`` script, which records when its own code last ran and which
processes of earlier runs were still alive when it started: no two runs may ever live at
once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from dbfaults import ServerUnderTest, frozen, mariadb_under_test, postgres_under_test
from faultproxy import FaultProxy
from harness import MasterProcess, running_master, wait_for, write_config
from pg import PgCluster, url_text
from sqlalchemy import URL, select

from pandaserver.config.daemon import LEASE_TTL_MIN
from pandaserver.db.base.engine import engine_from_url
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_lease

TTL = LEASE_TTL_MIN  # the smallest lease the config accepts: the tightest margins
TAKEOVER_SLACK = 8.0  # generous: grant retries, worker start-up, a loaded 2-core machine


def config_for(directory: Path, url: URL, scripts: dict[str, dict[str, Any]],
               **daemon: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    daemon.setdefault("heartbeat_interval", 1)
    daemon.setdefault("lease_ttl", TTL)
    cfg = write_config(directory, scripts, db_url=url_text(url), **daemon)
    upgrade = _cli(cfg, directory, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    return cfg


def proxied(url: URL, proxy: FaultProxy) -> URL:
    return url.set(host="127.0.0.1", port=proxy.port)


def guarded(seconds: float, stubborn: bool = False, **spec: Any) -> dict[str, Any]:
    arguments: list[Any] = [seconds] + (["stubborn"] if stubborn else [])
    return {"module": "guarded", "sync": True, "arguments": arguments, **spec}


def runs(workdir: Path, masters: list[MasterProcess], name: str) -> list[dict[str, Any]]:
    """Every run of ``name`` on any master: server, start, the last moment its code ran."""
    alive_dir = workdir / f"{name}-alive"
    found = []
    for master in masters:
        server = master.record.stem.removeprefix("record-")
        for start in master.events("start", name):
            tick = alive_dir / start["key"]
            last = float(tick.read_text()) if tick.exists() else start["t"]
            found.append({**start, "server": server, "last": max(last, start["t"])})
    return sorted(found, key=lambda r: r["t"])


def assert_never_together(found: list[dict[str, Any]]) -> None:
    """No run started while an earlier one's code or children were still alive."""
    for run in found:
        assert run["overlap"] == [], f"children of an earlier run alive at a start: {run}"
    for earlier, later in itertools.pairwise(found):
        assert earlier["last"] <= later["t"], (
            f"two runs lived at once: {earlier['server']} until {earlier['last']:.3f},"
            f" {later['server']} from {later['t']:.3f}")
    generations = [r["generation"] for r in found]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)


@pytest.fixture
def db(request: pytest.FixtureRequest) -> Iterator[ServerUnderTest]:
    """The database server of a fault test (``request.param``: "postgresql", the default,
    or "mysql" for MariaDB) with a fresh database."""
    backend = getattr(request, "param", "postgresql")
    if backend == "mysql":
        yield mariadb_under_test(request.getfixturevalue("mysql_server"),
                                 request.getfixturevalue("mysql_url"))
    else:
        yield postgres_under_test(request.getfixturevalue("pg_cluster"),
                                  request.getfixturevalue("pg_url"))


BOTH = pytest.mark.parametrize("db", ["postgresql", "mysql"], indirect=True)


def holder_of(masters: list[MasterProcess], name: str) -> MasterProcess:
    first = wait_for(lambda: [m for m in masters if m.events("start", name)], 40,
                     f"a first run of {name}")
    return first[0]


@pytest.mark.parametrize(("db", "stubborn"), [("postgresql", False), ("postgresql", True),
                                               ("mysql", False)],
                         ids=["polite", "ignores-SIGTERM", "mysql-polite"], indirect=["db"])
def test_a_partitioned_holder_is_fenced_before_its_lease_expires(
        tmp_path: Path, db: ServerUnderTest, stubborn: bool) -> None:
    """The holder's network goes silent mid-run: it kills its run (SIGKILL included, for a
    script that ignores SIGTERM) before the lease can expire; the other server takes over
    after expiry; the two runs never live at once."""
    scripts = {"g": guarded(600, stubborn, period=1, timeout=3600)}
    with ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(db.port))
        cfg_a = config_for(tmp_path / "a", proxied(db.url, proxy), scripts)
        cfg_b = config_for(tmp_path / "b", db.url, scripts)
        a = stack.enter_context(running_master(cfg_a, tmp_path, server="a"))
        a.wait_events(1, "start", "g", timeout=40)  # a holds the lease
        b = stack.enter_context(running_master(cfg_b, tmp_path, server="b"))
        b.wait_log("database: ", timeout=20)
        time.sleep(0.5)  # b asks, and is refused, at least once before the partition
        cut = time.monotonic()
        proxy.set_mode("hang")
        taken = b.wait_events(1, "start", "g", timeout=TTL + TAKEOVER_SLACK + 10)[0]
        a.wait_log(" fenced", timeout=10)
        proxy.set_mode("forward")
        found = runs(tmp_path, [a, b], "g")
    assert_never_together(found)
    first = found[0]
    assert first["server"] == "a" and taken["t"] - cut <= TTL + TAKEOVER_SLACK, \
        f"taken over {taken['t'] - cut:.1f} s after the partition (lease_ttl {TTL:g} s)"
    assert first["last"] < cut + TTL, "the holder's run outlived its lease"


@BOTH
def test_a_killed_holder_is_taken_over_within_the_ttl_whatever_the_timeout(
        tmp_path: Path, db: ServerUnderTest) -> None:
    cfg = config_for(tmp_path, db.url, {"g": guarded(600, period=1, timeout=3600)})
    with ExitStack() as stack:
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        a.wait_events(1, "start", "g", timeout=40)
        b = stack.enter_context(running_master(cfg, tmp_path, server="b"))
        b.wait_log("database: ", timeout=20)
        a.tree()  # remembered: teardown checks none of a's processes is left
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        taken = b.wait_events(1, "start", "g", timeout=TTL + TAKEOVER_SLACK + 10)[0]
        found = runs(tmp_path, [a, b], "g")
    assert_never_together(found)
    assert taken["t"] - killed <= TTL + TAKEOVER_SLACK, \
        f"taken over {taken['t'] - killed:.1f} s after the kill (lease_ttl {TTL:g} s)"


def test_a_frozen_holder_cannot_keep_its_run_past_the_lease(tmp_path: Path, pg_url: URL) -> None:
    """SIGSTOP of the holder's master (a VM pause, a stall): it cannot kill anything, so its
    worker ends the run on its own before the lease expires."""
    cfg = config_for(tmp_path, pg_url, {"g": guarded(600, period=1, timeout=3600)})
    with ExitStack() as stack:
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        a.wait_events(1, "start", "g", timeout=40)
        b = stack.enter_context(running_master(cfg, tmp_path, server="b"))
        b.wait_log("database: ", timeout=20)
        with frozen([a.proc.pid]):
            stopped = time.monotonic()
            taken = b.wait_events(1, "start", "g", timeout=TTL + TAKEOVER_SLACK + 10)[0]
        a.wait_log("g run", timeout=15)  # a sees its run gone when it wakes
        found = runs(tmp_path, [a, b], "g")
    assert_never_together(found)
    assert found[0]["server"] == "a" and found[0]["last"] < stopped + TTL
    assert taken["pid"] != found[0]["pid"] and found[-1]["server"] == "b"


@pytest.mark.serial  # gaps under 1.9 s for a 1-s period: run alone
@pytest.mark.parametrize(("db", "fault"), [("postgresql", "database-frozen"),
                                            ("postgresql", "partition"),
                                            ("mysql", "database-frozen")],
                         ids=["database-frozen", "partition", "mysql-database-frozen"],
                         indirect=["db"])
def test_local_schedules_keep_every_period_whatever_the_database_does(
        tmp_path: Path, db: ServerUnderTest, fault: str) -> None:
    """A 1-s non-sync script keeps its period while the database hangs (SIGSTOP) or this
    master's path to it goes silent; the sync script waits for the database."""
    scripts = {"tick": {"module": "record", "period": 1},
               "s": {"module": "record", "period": 1, "sync": True}}
    window = 12.0
    with ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(db.port))
        cfg = config_for(tmp_path, proxied(db.url, proxy), scripts, n_proc=2)
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        a.wait_events(2, "start", "s", timeout=40)
        start = time.monotonic()
        if fault == "partition":
            proxy.set_mode("hang")
            a.wait_events(len(a.events("start", "tick")) + int(window), "start", "tick",
                          timeout=window + 10)
            proxy.set_mode("forward")
        else:
            with frozen(db.pids()):
                a.wait_events(len(a.events("start", "tick")) + int(window), "start", "tick",
                              timeout=window + 10)
        end = time.monotonic()
        a.wait_log("database unavailable", timeout=10)
        synced = len(a.events("start", "s"))
        a.wait_events(synced + 2, "start", "s", timeout=30)  # and it recovers
    ticks = [e["t"] for e in a.events("start", "tick") if start - 1 <= e["t"] <= end]
    gaps = [b - x for x, b in itertools.pairwise(ticks)]
    assert len(ticks) >= window and max(gaps) < 1.9, \
        f"a local period was missed or delayed while the database was away: {gaps}"
    warnings = [line for line in a.log().splitlines() if "WARNING" in line
                and "database unavailable" in line]
    assert len(warnings) == 1, warnings


def _lease(url: URL, name: str) -> tuple[int, Any]:
    """(generation, expires_at) of lease ``name`` and the database's now (aware UTC)."""
    engine = engine_from_url(url)
    try:
        with engine.connect() as conn:
            gen, expires = conn.execute(select(daemon_lease.c.generation,
                                               daemon_lease.c.expires_at)
                                        .where(daemon_lease.c.name == name)).one()
            return int(gen), (expires, db_now(conn))
    finally:
        engine.dispose()


RESTART_DOWN = 5.5  # seconds with no database: past a renewal (ttl/3), short of the fence


@pytest.mark.serial  # the outage must fit between a renewal and the fence: run alone
@BOTH
def test_a_database_restart_is_ridden_out_by_the_holder_and_the_fleet(
        tmp_path: Path, db: ServerUnderTest) -> None:
    """The database stops (every connection cut) for longer than the renewal interval and
    starts again while a holds a long run's lease: a's failed renewal, retried every second,
    gets through once the server is back and keeps the lease (same generation, expiry moved
    past the restart) before the fence, so its run lives on and nobody else starts it; a
    short sync script is granted again after the restart."""
    scripts = {"g": guarded(600, period=1, timeout=3600),
               "s": {"module": "record", "period": 1, "sync": True}}
    cfg = config_for(tmp_path, db.url, scripts)
    with ExitStack() as stack:
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        first = a.wait_events(1, "start", "g", timeout=40)[0]
        b = stack.enter_context(running_master(cfg, tmp_path, server="b"))
        b.wait_log("database: ", timeout=20)
        generation, _ = _lease(db.url, "g")
        db.restart(RESTART_DOWN)
        _, (_, restarted) = _lease(db.url, "g")
        masters = [a, b]
        granted = sum(len(m.events("start", "s")) for m in masters)

        def renewed_after_restart() -> bool:
            gen, (expires, _) = _lease(db.url, "g")
            assert gen == generation, f"g was granted again: generation {gen}, was {generation}"
            return bool(expires >= restarted + timedelta(seconds=TTL - 1))

        wait_for(renewed_after_restart, TTL + 10, "a renewal of g after the restart")
        wait_for(lambda: sum(len(m.events("start", "s")) for m in masters) >= granted + 2, 30,
                 "grants of s after the restart")
        renewed = time.monotonic()
        tick = tmp_path / "g-alive" / first["key"]
        wait_for(lambda: float(tick.read_text()) > renewed, 5, "the holder's run alive")
        found = runs(tmp_path, masters, "g")
    assert_never_together(found)
    assert [r["key"] for r in found] == [first["key"]], f"g started again: {found}"
    assert "outcome=fenced" not in a.log(), a.log()[-3000:]
    assert "lease renewal failed" in a.log(), "no renewal met the outage: it proved nothing"


@pytest.mark.serial  # a 5-s bound after a reload: run alone
def test_a_shortened_period_is_honoured_fleet_wide_at_the_next_grant(
        tmp_path: Path, pg_url: URL) -> None:
    long = {"g": guarded(0, period=86400)}
    with ExitStack() as stack:
        cfg_a = config_for(tmp_path / "a", pg_url, long)
        cfg_b = config_for(tmp_path / "b", pg_url, long)
        a = stack.enter_context(running_master(cfg_a, tmp_path, server="a"))
        b = stack.enter_context(running_master(cfg_b, tmp_path, server="b"))
        masters = [a, b]
        wait_for(lambda: runs(tmp_path, masters, "g"), 40, "the first run")
        b.wait_log("database: ", timeout=20)
        for cfg in (cfg_a, cfg_b):
            config_for(cfg.parent, pg_url, {"g": guarded(0, period=1)})
        for master in masters:
            master.signal(signal.SIGHUP)
            master.wait_log("reload: script g changed", timeout=10)
        reloaded = time.monotonic()
        wait_for(lambda: len(runs(tmp_path, masters, "g")) >= 3, 20,
                 "runs under the shortened period")
        found = runs(tmp_path, masters, "g")
    assert found[1]["t"] - reloaded < 5.0
    assert_never_together(found)
    for earlier, later in itertools.pairwise(found):
        assert later["t"] - earlier["t"] >= 1.0 - 0.01, "two runs in one period"


def test_history_names_a_fenced_run(tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    """A holder whose database path dies mid-run records its run as fenced once it is back."""
    scripts = {"g": guarded(600, period=3600, timeout=3600)}
    with ExitStack() as stack:
        proxy = stack.enter_context(FaultProxy(pg_cluster.port))
        cfg = config_for(tmp_path, proxied(pg_url, proxy), scripts)
        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        a.wait_events(1, "start", "g", timeout=40)
        proxy.set_mode("hang")
        a.wait_log("g run 1 outcome=fenced", timeout=TTL + 10)
        proxy.set_mode("forward")
        a.wait_log("database available again", timeout=30)
        deadline = time.monotonic() + 20

        def fenced_row() -> Any:
            rows = json.loads(_cli(cfg, tmp_path, "history", "g", "--json").stdout or "[]")
            return [r for r in rows if r["outcome"] == "fenced"]

        rows = wait_for(fenced_row, max(1.0, deadline - time.monotonic()), "a fenced row")
    assert "lease" in (rows[0]["error"] or "")


def _cli(cfg: Path, workdir: Path, *args: str) -> Any:
    import subprocess
    import sys

    from harness import script_env

    return subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                           *args], capture_output=True, text=True, timeout=60,
                          env=script_env(workdir / "cli.jsonl"), stdin=subprocess.DEVNULL)


def test_the_worker_alone_holds_the_deadline(tmp_path: Path) -> None:
    """Unit-sized but real: a worker whose master writes a deadline and then says nothing
    kills its run's processes by that deadline."""
    import subprocess
    import sys

    from pandaserver.daemons.base.lifeline import encode_deadline

    read, write = os.pipe()
    code = (
        "import sys, subprocess, threading, time\n"
        "from pandaserver.daemons.worker.watchdog import watch_lifeline\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        "print(child.pid, flush=True)\n"
        f"watch_lifeline({read}, 1.0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(read,), stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    os.close(read)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        deadline = time.monotonic() + 2.0
        os.write(write, encode_deadline(deadline))
        proc.wait(10)
        assert time.monotonic() >= deadline - 1.0 - 0.1, "killed long before its deadline"
        wait_for(lambda: not psutil.pid_exists(child) or
                 psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 5, "the child's end")
        assert proc.returncode == -signal.SIGKILL
    finally:
        os.close(write)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

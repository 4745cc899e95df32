"""A failover of the database itself: a real primary, a real asynchronous standby, two masters
on a URL listing both; the primary is SIGKILLed while a sync run holds its lease, and the
standby is promoted.

The race is forced, not hoped for: the replication stream runs through a ``FaultProxy``
that goes silent before the masters start, so the standby misses everything they write to
the primary (the grant of the running lease, their heartbeats, the history), as an
asynchronous standby misses its primary's last commits when the primary dies. On the
promoted standby the lease was never granted: any master could be granted the same
generation at once, beside the run still going on the other. The masters must notice that
the database is another server, fence that run, grant nothing for lease_ttl + SAFETY, and
re-send the history the new primary lacks. A third master, started right after the
promotion, has no earlier server to compare with: it must learn from the new primary that
its history began moments ago and grant nothing before lease_ttl has passed since.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from harness import MasterProcess, running_master, wait_for, write_config
from pg import PgCluster, PgUnavailable
from pgfleet import cli, granted, log_grants
from pgstandby import PgStandby

from pandaserver.config.daemon import LEASE_TTL_MIN

TTL = LEASE_TTL_MIN


@pytest.fixture
def primary() -> Iterator[PgCluster]:
    """A primary of this test's own (it is killed: never the session's shared cluster)."""
    cluster = PgCluster()
    try:
        cluster.start()
    except PgUnavailable as exc:
        cluster.stop()
        pytest.fail(f"PostgreSQL is needed for this test and cannot start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def starts(masters: list[MasterProcess], workdir: Path, name: str) -> list[dict[str, Any]]:
    """Every run of ``name`` on any master, by start: its server and the last moment its
    code ran (the ``guarded`` script's tick file)."""
    found = []
    for master in masters:
        server = master.record.stem.removeprefix("record-")
        for start in master.events("start", name):
            tick = workdir / f"{name}-alive" / start["key"]
            last = float(tick.read_text()) if tick.exists() else start["t"]
            found.append({**start, "server": server, "last": max(last, start["t"])})
    return sorted(found, key=lambda r: r["t"])


def test_a_failover_to_a_standby_that_missed_the_grant_runs_nothing_twice(
        tmp_path: Path, primary: PgCluster) -> None:
    with ExitStack() as stack:
        replication = stack.enter_context(FaultProxy(primary.port))
        url = primary.create_database("fleet")
        standby = PgStandby(primary, via_port=replication.port)
        stack.callback(standby.stop)
        standby.start()
        hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        db_url = (f"postgresql+psycopg2://{primary.superuser}:{primary.password}@{hosts}/fleet"
                  "?target_session_attrs=read-write")  # libpq's spelling
        # g "stubborn": its run ignores SIGTERM, so it lives the kill grace after its fence;
        # tick, non-sync: its history rows written before the kill never reach the standby
        scripts = {"g": {"module": "guarded", "sync": True, "arguments": [600, "stubborn"],
                         "period": 1, "timeout": 3600},
                   "tick": {"module": "record", "period": 1}}
        cfg = write_config(tmp_path, scripts, db_url=db_url, heartbeat_interval=1,
                           lease_ttl=TTL)
        upgraded = cli(tmp_path, cfg, "db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        log_grants(primary, url)
        standby.caught_up()
        replication.set_mode("hang")  # from here on the standby receives nothing

        a = stack.enter_context(running_master(cfg, tmp_path, server="a"))
        b = stack.enter_context(running_master(cfg, tmp_path, server="b"))
        first = wait_for(lambda: starts([a, b], tmp_path, "g"), 40, "a first run of g")[0]
        holder, other = (a, b) if first["server"] == "a" else (b, a)
        other.wait_log("database: ", timeout=20)  # both started on the primary
        assert [server for _, _, server in granted(primary, url)] == [first["server"]]
        for master in (a, b):
            master.tree()  # remembered: teardown checks none of their processes is left

        wait_for(lambda: primary.sql("SELECT count(*) FROM daemon_run WHERE script = 'tick'"
                                     " AND outcome = 'ok'", "fleet")[0][0] >= 2, 20,
                 "history rows that only the old primary has")
        standby.kill_primary()
        time.sleep(2)  # the scenario, not a wait: the standby is promoted 2 s after the crash
        standby.promote()
        promoted = time.monotonic()
        # started after the failover: nothing to compare with but what the server tells
        late = stack.enter_context(running_master(cfg, tmp_path, server="c"))
        fleet = [a, b, late]
        taken = wait_for(lambda: [r for r in starts(fleet, tmp_path, "g") if r["t"] > promoted],
                         2 * TTL + 10, "a run of g after the promotion")[0]
        holder.wait_log(" fenced", timeout=10)  # by the failover, or by a refused renewal
        found = starts(fleet, tmp_path, "g")
        recorded = [(master.record.stem.removeprefix("record-"), event["run"])
                    for master in fleet for event in master.events("start")]
        for master in fleet:
            master.signal(signal.SIGTERM)
        for master in fleet:
            assert master.stop() == 0, master.log()[-3000:]
        logs = {master.record.stem: master.log() for master in (a, b)}
        holder_log, late_log = holder.log(), late.log()
        rows = standby.sql("SELECT server, run_id, outcome FROM daemon_run"
                           " ORDER BY started_at", "fleet")
        new_grants = granted(standby, url)
        arrivals = standby.sql("SELECT timeline, first_seen FROM daemon_db_timeline", "fleet")

    # never two runs at once, across the failover
    for run in found:
        assert run["overlap"] == [], f"children of an earlier run alive at a start: {run}"
    for earlier, later in itertools.pairwise(found):
        assert earlier["last"] <= later["t"], (
            f"two runs lived at once: {earlier['server']} until {earlier['last']:.3f},"
            f" {later['server']} from {later['t']:.3f}")
    # the holder sent no renewal to the new primary (it would have been refused there)
    assert "no longer ours (expired and taken" not in holder_log, \
        "a renewal reached the new primary"
    # the holder's run ended when its master noticed, not a lease_ttl later
    assert found[0]["last"] < promoted + TTL
    # the first master to reach the new primary recorded its timeline; no grant there, by
    # any master, before lease_ttl had passed since (the database's clock)
    first_seen = dict(arrivals)
    assert set(first_seen) >= {2}, f"the new timeline was not recorded: {arrivals}"
    early = [(g, at, server) for g, at, server in new_grants
             if (at - first_seen[2]).total_seconds() < TTL]
    assert new_grants and not early, f"granted on the new primary before the window: {early}"
    # the master started after the promotion granted nothing before the old leases fenced
    late_runs = [run["t"] - promoted for run in found if run["server"] == "c"]
    assert all(t >= TTL for t in late_runs), \
        f"the master started after the failover ran g {min(late_runs):.1f} s after the" \
        f" promotion, before lease_ttl ({TTL:g} s) had passed"
    assert "began at most" in late_log, "the late master did not say why it waited"
    # taken over within 2 x lease_ttl of the promotion (lease_ttl + SAFETY of the gate)
    assert taken["t"] - promoted <= 2 * TTL, \
        f"taken over {taken['t'] - promoted:.1f} s after the promotion (lease_ttl {TTL:g} s)"
    # each master noticed that its database was another server
    for name, text in logs.items():
        assert "database failover noticed" in text, f"{name} did not notice the failover"
    # no history row lost: every run has exactly one row on the new primary, with an outcome
    by_key = {(server, run_id): outcome for server, run_id, outcome in rows}
    assert len(by_key) == len(rows), f"a run has two rows: {rows}"
    for server, run_id in recorded:
        outcome = by_key.get((server, run_id))
        assert outcome not in (None, "running"), \
            f"run {run_id} of {server} has no final row on the new primary: {rows}"

"""Cron scripts in real masters whose wall clocks libfaketime shifts: a busy pool runs a
missed firing once, late, and skips the rest; a sync script on three masters whose clocks
disagree runs its firing once fleet-wide, never early, and a master restarted after it does
not run it again.

Cost: minute firings cannot be hurried where the database judges them (its clock is real),
so the sync test waits for one real minute boundary (under a minute, 35 s on average) and
checks the restart inside that firing's minute; the busy-pool test shifts its one master's
clock to 8 s before a minute and steps it, so it needs no wait for a real minute (about
15 s).
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path

from harness import running_master, wait_for, write_config
from pg import PgCluster
from pgfleet import faked_clock_env, fleet_config, granted, log_grants, start_fleet
from sqlalchemy import URL

from pandaserver.daemons.master.statusfile import read_status, status_path


def script_status(tmp_path: Path, server: str, name: str) -> dict[str, object] | None:
    data = read_status(status_path(tmp_path / "state", server))
    found = [s for s in (data or {}).get("scripts", []) if s.get("name") == name]
    return found[0] if found else None


def test_a_busy_pool_runs_a_missed_firing_once_late_and_skips_the_rest(tmp_path: Path) -> None:
    # the master's clock starts 8 s before a minute boundary B (its own, shifted)
    offset = math.ceil(time.time() / 60) * 60 + 60 - 8 - time.time()
    shift = round(offset)
    boundary = math.ceil((time.time() + shift) / 60) * 60
    clock_file = tmp_path / "clock-solo"
    clock_file.write_text(f"+{shift}\n")
    cfg = write_config(tmp_path, {
        "tick": {"module": "record", "cron": "* * * * *"},
        # on a period: runs at start-up and holds the only worker over B
        "long": {"module": "record", "period": 3600, "arguments": [12]},
    }, n_proc=1)
    with running_master(cfg, tmp_path, server="solo",
                        extra_env=faked_clock_env(clock_file)) as master:
        [long_start] = master.wait_events(1, "start", "long", timeout=30)
        # NTP steps the clock two minutes forward while the worker is busy: B, B+60 and
        # B+120 all pass before it is free
        clock_file.write_text(f"+{shift + 120}\n")
        [long_end] = master.wait_events(1, "end", "long", timeout=30)
        master.wait_events(1, "end", "tick", timeout=30)
        # it waits for the next firing now: B + 180, not B + 60 (no burst of the missed ones)
        wait_for(lambda: (s := script_status(tmp_path, "solo", "tick")) is not None
                 and not s["running"] and s["next_firing"] == boundary + 180, 10,
                 "tick waiting for its next firing in the status file")
        starts = master.events("start", "tick")
        assert master.stop() == 0
    assert len(starts) == 1, starts
    assert starts[0]["t"] >= long_end["t"] > long_start["t"]  # it waited for the worker


def test_a_sync_firing_runs_once_across_masters_whose_clocks_disagree(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"minute": {"module": "record", "cron": "* * * * *",
                                                     "sync": True}}, n_proc=1)
    log_grants(pg_cluster, pg_url)

    def grants() -> list[tuple[int, object, str]]:
        return [g for g in granted(pg_cluster, pg_url) if g[0] > 0]  # 0: the row's making

    with ExitStack() as stack:
        # one master on time, one 20 s fast, one 20 s slow
        masters = start_fleet(stack, cfg, tmp_path, {"a": "+0", "b": "+20", "c": "-20"})
        # the first firing is the database's next minute; each master may have asked
        # for the previous one at start-up and been refused (served when the row was made)
        # (at most a minute, plus the masters' start on a loaded machine)
        wait_for(lambda: grants(), 150, "the first firing's grant")
        [(generation, at, server)] = grants()
        [(firing,)] = pg_cluster.sql("SELECT firing FROM daemon_lease WHERE name = 'minute'",
                                     str(pg_url.database))
        assert (firing.second, firing.microsecond) == (0, 0), firing  # on a minute
        # never early: granted at or after the firing by the database's clock (b's clock
        # is 20 s fast: it asked early and was told to wait), within its minute
        print(f"granted to {server} {(at - firing).total_seconds():.3f} s after {firing}")
        assert firing <= at and (at - firing).total_seconds() < 60
        runner = next(m for m in masters if m.record.stem == f"record-{server}")
        runner.wait_events(1, "end", "minute", timeout=20)
        # a master restarted within the firing's minute starts from that firing (the
        # latest), learns from the lease that it was served (refused, or seen granted in
        # the lease table), and waits for the next one without running it
        restarted = next(m for m in masters if m is not runner)
        name = restarted.record.stem.removeprefix("record-")
        assert restarted.stop() == 0
        status_path(tmp_path / "state", name).unlink()  # what the new master writes only
        again = stack.enter_context(running_master(
            cfg, tmp_path, server=name,
            extra_env=faked_clock_env(tmp_path / f"clock-{name}")))
        following = firing.timestamp() + 60
        wait_for(lambda: (s := script_status(tmp_path, name, "minute")) is not None
                 and s["next_firing"] == following, 60,
                 "the restarted master waiting for the next firing")
        assert len(grants()) == 1, grants()  # no second run of the firing
        assert (pg_cluster.sql("SELECT statement_timestamp()", str(pg_url.database))[0][0]
                - firing).total_seconds() < 60, "the next minute came: the check proves nothing"
        for master in [*masters, again]:
            if master.proc.poll() is None:
                assert master.stop() == 0
    runs = [e for m in [*masters, again] for e in m.events("start", "minute")]
    assert len(runs) == 1 and runs[0]["generation"] == generation

"""A fleet stopped whole and started again after an idle gap keeps a sync script's period:
consecutive runs, on any server, are never closer than the period less the tolerance
(``db/base/servertime.py``: ``due_tolerance``), however the old grid fell (docs/scheduling.md)."""

from __future__ import annotations

import functools
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path

from harness import MasterProcess, running_master, wait_for
from pg import PgCluster
from pgfleet import fleet_config, fleet_events, granted, log_grants
from sqlalchemy import URL

from pandaserver.db.base.servertime import due_tolerance

PERIOD = 2.0
RESTARTS = 3  # the old grid put the first grant after a restart within the tolerance of
# its next point about once in ten restarts: three make a pass on the old rule unlikely
IDLE = 3.3 * PERIOD  # a few periods, and a fraction of one, with no master running


def _ran(masters: list[MasterProcess], runs: int) -> bool:
    return len(fleet_events(masters, "end", "tick")) >= runs


def test_a_fleet_restarted_after_an_idle_gap_runs_no_sooner_than_the_period(
        tmp_path: Path, pg_url: URL, pg_cluster: PgCluster) -> None:
    cfg = fleet_config(tmp_path, pg_url, {"tick": {"module": "record", "period": PERIOD,
                                                   "sync": True}}, n_proc=1)
    log_grants(pg_cluster, pg_url)
    ran = 0
    for restart in range(RESTARTS + 1):
        if restart:
            # the whole fleet is down: this wait is the idle gap itself, nothing to wait for
            time.sleep(IDLE)
        with ExitStack() as stack:
            masters = [stack.enter_context(running_master(cfg, tmp_path, server=name))
                       for name in ("a", "b", "c")]
            wait_for(functools.partial(_ran, masters, ran + 3), 60, "three runs of the fleet")
            for master in masters:
                assert master.stop() == 0, master.log()[-3000:]
            ran = len(fleet_events(masters, "end", "tick"))
    # Every grant as the database logged it (its clock, exact): each run starts right
    # after its grant (the runs' own clocks add each run's dispatch jitter)
    grants = granted(pg_cluster, pg_url)
    starts = fleet_events(masters, "start", "tick")
    assert {s["generation"] for s in starts} <= {generation for generation, _, _ in grants}
    floor = PERIOD - due_tolerance(PERIOD)
    gaps = [((b - a).total_seconds(), a, b) for (_, a, _), (_, b, _) in pairwise(grants)]
    close = [(gap, str(a), str(b)) for gap, a, b in gaps if gap < floor]
    assert not close, f"consecutive grants closer than {floor} s: {close}"
    # and the restarts really left the fleet idle for a few periods
    idle = [gap for gap, _, _ in gaps if gap > IDLE]
    assert len(idle) == RESTARTS, gaps

"""The chaos benchmark's database side (benchmarks/chaos.py): a primary with a streaming
standby, each master reaching both through proxies of its own, and the failover fault.

Two slots, each a fixed port: the primary starts on one, the standby (tests/pgstandby.py,
``pg_basebackup -R``, asynchronous) on the other. Each master has one ``FaultProxy`` per
slot and a multi-host URL listing both (``target_session_attrs=read-write``: libpq keeps
the one that accepts writes), so a partition silences a master's path to either server,
and a failover needs no change of URL. The replication stream runs through a proxy too:
the failover may cut it a few seconds before the crash, so that the standby misses the
primary's last commits (grants, heartbeats, history), as an asynchronous standby does.

A failover: the replication stream cut for 0 to 5 s (drawn), the primary SIGKILLed with
every backend, the standby promoted 2 s later (as tests/acceptance/test_failover.py), and
a new standby built from the new primary on the dead primary's port, so that a later
failover can happen in the same run (any number per run). The freeze and restart faults
act on ``Database.primary``, whichever server that is now.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import URL

if str(Path(__file__).resolve().parent.parent / "tests") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import FaultProxy
from pg import PgCluster
from pgstandby import PgStandby

PROMOTE_AFTER = 2.0  # seconds between the primary's crash and the standby's promotion
CUT = (0.0, 5.0)  # seconds the standby is cut off before the crash (drawn)


class MasterProxies:
    """One master's path to the database: a proxy per slot, switched together."""

    def __init__(self, ports: list[int]) -> None:
        self.proxies = [FaultProxy(port) for port in ports]

    def set_mode(self, mode: str) -> None:
        for proxy in self.proxies:
            proxy.set_mode(mode)

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()

    def url(self, cluster: PgCluster, database: str) -> URL:
        hosts = tuple(f"127.0.0.1:{proxy.port}" for proxy in self.proxies)
        return URL.create("postgresql+psycopg2", username=cluster.superuser,
                          password=cluster.password, database=database,
                          query={"host": hosts, "target_session_attrs": "read-write"})


class Database:
    """The primary (``primary``, a ``PgCluster``), its standby, the replication proxy, and
    the promotions so far (``promotions``: (crash, promotion) monotonic times)."""

    def __init__(self, primary: PgCluster) -> None:
        self.primary = primary
        self.standby: PgStandby | None = None
        self.replication: FaultProxy | None = None
        self.promotions: list[tuple[float, float]] = []
        self.dead: list[PgCluster] = []

    def start_standby(self, port: int | None = None) -> None:
        """A standby of the current primary, through a replication proxy, on ``port``
        (the other slot's; a fresh port the first time)."""
        self.replication = FaultProxy(self.primary.port)
        self.standby = PgStandby(self.primary, via_port=self.replication.port)
        if port:
            self.standby.port = port
        self.standby.start()
        self.standby.caught_up()

    def failover(self, rng: random.Random) -> str:
        """Crash the primary, promote the standby, build a new standby; what happened."""
        assert self.standby is not None and self.replication is not None
        cut = rng.uniform(*CUT)
        self.replication.set_mode("hang")  # from here on the standby misses every commit
        time.sleep(cut)  # the fault's own window: the writes the standby will not have
        crashed = time.monotonic()
        self.standby.kill_primary()
        time.sleep(PROMOTE_AFTER)  # the scenario: promoted 2 s after the crash
        self.standby.promote()
        promoted = time.monotonic()
        self.promotions.append((crashed, promoted))
        old, self.primary = self.primary, self.standby
        old_port = old.port
        self.replication.close()
        old._started = False  # dead already: stop() only removes its files (never a kill
        old.stop()  # of a pid the dead postmaster's file may name and another now has)
        began = time.monotonic()
        self.start_standby(port=old_port)
        return (f"standby cut {cut:.1f} s before the crash, promoted {PROMOTE_AFTER:g} s"
                f" after; new standby on :{old_port} in {time.monotonic() - began:.1f} s")

    def close(self) -> None:
        if self.replication is not None:
            self.replication.close()
        for cluster in (self.standby, self.primary):
            if cluster is not None:
                cluster.stop()


def sync_after_promotions(db: Database, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each promotion: seconds from the crash and from the promotion to the first start
    of any sync run after it (``runs``: every sync run's start ``t``, fleet-wide)."""
    found = []
    for crashed, promoted in db.promotions:
        later = [r["t"] for r in runs if r["t"] > promoted]
        if not later:  # nothing ran after it (the run ended first)
            found.append({"since_crash_s": None, "since_promotion_s": None})
            continue
        found.append({"since_crash_s": round(min(later) - crashed, 1),
                      "since_promotion_s": round(min(later) - promoted, 1)})
    return found


def generations_by_era(db: Database, runs: list[dict[str, Any]]) -> list[list[int]]:
    """The generations of ``runs`` (by start), one list per database era: before the first
    promotion, between two, after the last. They grow within an era; across a promotion a
    generation may come again, since the grant that used it may not have reached the
    standby (asynchronous replication: docs/multi-server.md, "Failover of the database")."""
    bounds = [promoted for _, promoted in db.promotions]
    eras: list[list[int]] = [[] for _ in range(len(bounds) + 1)]
    for run in sorted(runs, key=lambda r: r["t"]):
        eras[sum(1 for b in bounds if run["t"] > b)].append(run["generation"])
    return eras

"""Chaos: three masters on a real PostgreSQL with a standby, random faults for a while, then the invariants.

Usage (prints the fault log, the invariants and figures; exits 1 on a violation):
    .venv/bin/python benchmarks/chaos.py --minutes 10 --seed 1
    .venv/bin/python benchmarks/chaos.py --minutes 1.5 --seed 7 --json   # + one JSON line
    .venv/bin/python benchmarks/chaos.py --minutes 2 --seed 3 --only partition master-kill

Three masters (a, b, c; n_proc 6, lease_ttl 15, heartbeat every second) on a throwaway
PostgreSQL (tests/pg.py) with a streaming standby, each through fault proxies of its own
(tests/faultproxy.py; one per database server, on a multi-host URL: benchmarks/chaosdb.py), run
three sync scripts of a few seconds (the tests' ``guarded`` script: it stamps its start with
run id and generation, the last moment its code ran, and children of earlier runs still
alive) and two non-sync ones (``record``). Once every master ran, faults are injected one
at a time, drawn from ``--seed``: each kind once first (in a seeded order, however long
that takes), then at random until ``--minutes`` have passed, a healthy pause of 2 to 6 s
between two. Kinds (``FAULTS``):

- db-freeze: the postmaster and all its backends SIGSTOPped for 2 to 20 s;
- db-restart: ``pg_ctl restart -m fast`` (every connection cut);
- partition: one master's proxy goes silent (no error) for 3 to 25 s;
- master-stop: one master SIGSTOPped for 3 to 25 s (its workers keep their deadlines);
- master-kill: one master killed with kill -9, started again 1 to 10 s later;
  (these three hit the holder of the long sync run 7 times in 10, waiting up to 20 s for
  one)
- worker-kill: one worker of one master killed with kill -9, with its children (a worker in
  a run that started a child when there is one).

- failover: the primary SIGKILLed (its standby cut off 0 to 5 s before, so that it may miss
  the last commits), the standby promoted 2 s later, a new standby built from the new
  primary (benchmarks/chaosdb.py: the database runs as a primary with a streaming standby,
  each master reaching both through proxies of its own on a multi-host URL; db-freeze and
  db-restart act on whichever server is the primary now).

At the end everything is healed, every script must run again on every master that has it
(sync: on any), the fleet is stopped with SIGTERM and the invariants are checked:
no two runs of a sync script lived at once (and generations grow with starts, between two
promotions: a grant the standby never received may be granted again); every run
that started has exactly one history row, with an outcome; no row left ``running``, no
lease left held; every master stopped with status 0; no process left. A run whose master
was killed with kill -9 just after its start, or during an outage, is no exception: its
start is in the master's history journal (docs/database.md, "Run history"), so a run with
no row is a violation. Figures: the faults
injected, each non-sync script's longest gap between starts on each master outside that
master's own faults (stop, kill, worker kill; plus 3 s of settling) and overall, and each
sync script's longest time with no run fleet-wide (with the faults it overlapped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dbfaults import frozen, postgres_pids, restart_postgres

# never benchmarks/ itself on sys.path when imported (tests/acceptance/test_chaos.py): its
# pgfleet.py would then hide the tests' pgfleet.py from every later import in that process
if __package__:
    from benchmarks import chaosdb
    from benchmarks.faultkit import Fleet, kill_tree, note, overlaps
else:  # run as a script: its own folder is on sys.path already
    import chaosdb
    from faultkit import Fleet, kill_tree, note, overlaps
from harness import wait_for
from pg import PgCluster

SERVERS = ("a", "b", "c")
TTL = 15
N_PROC = 6  # a worker for every script: a non-sync run never waits for a busy pool
# name: (seconds a run takes, period); "long" outlives a lease (TTL) and lives by renewals:
# a partition or a stop of its holder must fence it
SYNC = {"g1": (2.0, 3), "g2": (4.0, 6), "g3": (1.0, 2), "long": (40.0, 5)}
LOCAL = {"tick": {"module": "record", "period": 1},
         "tock": {"module": "record", "period": 4, "arguments": [1.5]}}
SETTLE = 3.0  # seconds after a master's own fault still counted as that fault's
PAUSE = (2.0, 6.0)  # healthy seconds between two faults
RECOVERY = 90.0  # after the heal: every script runs again within this (a liveness bound)
HIT_HOLDER = 0.7  # how often a partition, stop or kill hits the holder of "long" ...
HOLDER_WAIT = 20.0  # ... waited for this long when nobody holds it


def scripts() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {
        name: {"module": "guarded", "sync": True, "arguments": [seconds], "period": period,
               "timeout": 60} for name, (seconds, period) in SYNC.items()}
    found.update(LOCAL)
    return found


@dataclass
class Fault:
    kind: str
    target: str  # a server, or "db"
    start: float  # monotonic
    end: float = 0.0
    detail: str = ""

    def own_window(self) -> tuple[float, float]:
        return self.start, self.end + SETTLE


@dataclass
class Chaos:
    cluster: PgCluster  # the primary now (a failover changes it)
    fleet: Fleet
    proxies: dict[str, chaosdb.MasterProxies]
    db: chaosdb.Database
    faults: list[Fault] = field(default_factory=list)
    began: float = 0.0  # monotonic: the start of the faults' time

    def hold(self, seconds: float) -> None:
        time.sleep(seconds)  # the fault's window itself: nothing to wait for


    def target(self, rng: random.Random) -> str:
        """A master to hit: most often the holder of the long sync run (the one whose
        fencing matters; waited for up to HOLDER_WAIT seconds), else any."""
        server = rng.choice(SERVERS)
        if rng.random() < HIT_HOLDER:
            with contextlib.suppress(AssertionError):
                return str(wait_for(self.holder, HOLDER_WAIT, "a holder of long", interval=0.5))
        return server

    def holder(self) -> str | None:
        held = self.cluster.sql(  # granted a second ago at least: its run has started
            "SELECT owner_server FROM daemon_lease WHERE name = 'long' AND expires_at >"
            " statement_timestamp() AND acquired_at < statement_timestamp() - interval '1 s'",
            str(self.fleet.url.database))
        return str(held[0][0]) if held and held[0][0] in SERVERS else None


# ----- the faults: each injects, holds, heals, and says what it did ---------------------------
def db_freeze(chaos: Chaos, rng: random.Random) -> Fault:
    seconds = rng.uniform(2, 20)
    fault = Fault("db-freeze", "db", time.monotonic())
    with frozen(postgres_pids(chaos.cluster)):
        chaos.hold(seconds)
    return fault


def db_restart(chaos: Chaos, rng: random.Random) -> Fault:
    fault = Fault("db-restart", "db", time.monotonic())
    restart_postgres(chaos.cluster)
    fault.detail = f"back after {time.monotonic() - fault.start:.1f} s"
    return fault


def failover(chaos: Chaos, rng: random.Random) -> Fault:
    with contextlib.suppress(AssertionError):  # mid-run: while "long" is held, when it is
        wait_for(chaos.holder, HOLDER_WAIT, "a holder of long", interval=0.5)
    fault = Fault("failover", "db", time.monotonic())
    fault.detail = chaos.db.failover(rng)
    chaos.cluster = chaos.db.primary
    return fault


def partition(chaos: Chaos, rng: random.Random) -> Fault:
    server, seconds = chaos.target(rng), rng.uniform(3, 25)
    fault = Fault("partition", server, time.monotonic())
    chaos.proxies[server].set_mode("hang")
    try:
        chaos.hold(seconds)
    finally:
        chaos.proxies[server].set_mode("forward")
    return fault


def master_stop(chaos: Chaos, rng: random.Random) -> Fault:
    server, seconds = chaos.target(rng), rng.uniform(3, 25)
    fault = Fault("master-stop", server, time.monotonic())
    with frozen([chaos.fleet.masters[server].proc.pid]):
        chaos.hold(seconds)
    return fault


def master_kill(chaos: Chaos, rng: random.Random) -> Fault:
    server, seconds = chaos.target(rng), rng.uniform(1, 10)
    fault = Fault("master-kill", server, time.monotonic())
    chaos.fleet.masters[server].signal(signal.SIGKILL)
    chaos.hold(seconds)
    master = chaos.fleet.start(server)
    try:
        master.wait_log("master started", timeout=60)
        fault.detail = f"down {seconds:.1f} s, started again in" \
                       f" {time.monotonic() - fault.start - seconds:.1f} s"
    except AssertionError:
        fault.detail = f"down {seconds:.1f} s, NOT started again within 60 s"
    return fault


def worker_kill(chaos: Chaos, rng: random.Random) -> Fault:
    server = rng.choice(SERVERS)
    fault = Fault("worker-kill", server, time.monotonic())
    workers = sorted(chaos.fleet.masters[server].workers(), key=lambda p: p.pid)
    busy = [w for w in workers if _has_children(w)]  # in a run that started a child
    if not workers:
        fault.detail = "no worker to kill"
    else:
        killed = kill_tree(rng.choice(busy or workers).pid)
        fault.detail = f"{len(killed)} process(es): {killed}"
    return fault


def _has_children(proc: psutil.Process) -> bool:
    try:
        return bool(proc.children())
    except psutil.Error:
        return False


FAULTS: dict[str, Callable[[Chaos, random.Random], Fault]] = {
    "db-freeze": db_freeze, "db-restart": db_restart, "partition": partition,
    "master-stop": master_stop, "master-kill": master_kill, "worker-kill": worker_kill,
    "failover": failover,
}


# ----- the run ---------------------------------------------------------------------------------
def inject(chaos: Chaos, rng: random.Random, seconds: float, kinds: list[str]) -> None:
    """Faults one at a time: each kind once (seeded order), however long that takes, then
    kinds at random until ``seconds`` have passed since the first."""
    first = list(kinds)
    rng.shuffle(first)
    chaos.began = time.monotonic()
    until = chaos.began + seconds
    while first or time.monotonic() < until:
        chaos.hold(rng.uniform(*PAUSE))
        if not first and time.monotonic() >= until:
            break
        kind = first.pop(0) if first else rng.choice(kinds)
        fault = FAULTS[kind](chaos, rng)
        fault.end = time.monotonic()
        chaos.faults.append(fault)
        note(f"  +{fault.start - chaos.began:6.1f} s  {fault.kind:<11} {fault.target:<2}"
             f"  {fault.detail}")


def longest_gap(starts: list[float], excluded: list[tuple[float, float]]) -> float | None:
    """The longest time between consecutive starts whose span meets no excluded window."""
    gaps = [b - a for a, b in pairwise(sorted(starts))
            if not any(a < end and start < b for start, end in excluded)]
    return round(max(gaps), 2) if gaps else None


def sync_gap(found: list[dict[str, Any]], faults: list[Fault]) -> dict[str, Any]:
    """The longest time with no run of a sync script fleet-wide, and the faults it met."""
    best: dict[str, Any] = {"seconds": None, "during": []}
    last = None
    for run in found:
        if last is not None and (best["seconds"] is None or run["t"] - last > best["seconds"]):
            a, b = last, run["t"]
            best = {"seconds": round(b - a, 2),
                    "during": sorted({f"{f.kind} {f.target}" for f in faults
                                      if f.start < b and a < f.end})}
        last = run["last"] if last is None else max(last, run["last"])
    return best


def history_problems(cluster: PgCluster, fleet: Fleet, names: list[str]) -> list[str]:
    """Violations of "one history row with an outcome per run" (a kill -9 of the master
    included: the run's start is in its journal)."""
    db = str(fleet.url.database)
    rows = cluster.sql("SELECT script, server, pid, run_id, outcome, master_id FROM daemon_run"
                       " WHERE outcome <> 'skipped'", db)
    by_run = Counter((str(s), str(sv), pid, run) for s, sv, pid, run, _, _ in rows)
    by_key = Counter((m, run) for _, _, _, run, _, m in rows if m is not None)
    problems = [f"{n} history rows for one run (master id {m}, run {r})"
                for (m, r), n in by_key.items() if n > 1]
    problems += [f"run {r} of {s} on {sv} (worker {p}) left running"
                 for s, sv, p, r, outcome, _ in rows if outcome == "running"]
    for server in SERVERS:
        for name in names:
            for start in fleet.starts(server, name):
                count = by_run[(name, server, start["pid"], start.get("run"))]
                if count != 1:
                    problems.append(f"run {start.get('run')} of {name} on {server} (worker"
                                    f" {start['pid']}) started and has {count} history rows")
    held = cluster.sql("SELECT name, owner_server, generation FROM daemon_lease"
                       " WHERE expires_at > statement_timestamp()", db)
    problems += [f"lease {n} still held by {s} (generation {g}) after the stop"
                 for n, s, g in held]
    return problems


def recovered(fleet: Fleet, healed: float) -> list[str]:
    """What did not run again after the heal, within RECOVERY seconds."""
    def missing() -> list[str]:
        gone = [f"{name} (sync)" for name in SYNC
                if not any(e["t"] > healed for s in SERVERS for e in fleet.starts(s, name))]
        gone += [f"{name} on {s}" for name in LOCAL for s in SERVERS
                 if not any(e["t"] > healed for e in fleet.starts(s, name))]
        return gone

    try:
        wait_for(lambda: not missing(), RECOVERY, "every script to run again", interval=0.5)
        return []
    except AssertionError:
        return [f"did not run again within {RECOVERY:g} s of the heal: {', '.join(missing())}"]


def run_chaos(minutes: float, seed: int, kinds: list[str] | None = None,
              keep: bool = False) -> dict[str, Any]:
    """The whole run; the report's ``violations`` is empty when every invariant held."""
    kinds = list(kinds or FAULTS)
    rng = random.Random(seed)
    cluster = PgCluster()
    db = chaosdb.Database(cluster)
    try:
        cluster.start()
        fleet = Fleet(cluster, "chaos")
        db.start_standby()
    except BaseException:
        db.close()
        raise
    assert db.standby is not None
    proxies = {server: chaosdb.MasterProxies([cluster.port, db.standby.port])
               for server in SERVERS}
    chaos = Chaos(cluster, fleet, proxies, db)
    report: dict[str, Any] = {"minutes": minutes, "seed": seed, "kinds": kinds}
    violations: list[str] = []
    try:
        for server in SERVERS:
            url = proxies[server].url(cluster, str(fleet.url.database))
            fleet.config(server, scripts(), url, n_proc=N_PROC, lease_ttl=TTL,
                         heartbeat_interval=1)
            fleet.start(server)
        wait_for(lambda: all(fleet.starts(s, n) for s in SERVERS for n in LOCAL)
                 and all(any(fleet.starts(s, n) for s in SERVERS) for n in SYNC),
                 90, "every script's first run")
        note(f"chaos: seed {seed}, {minutes:g} min of faults ({', '.join(kinds)})")
        try:
            inject(chaos, rng, minutes * 60, kinds)
        finally:
            for proxy in proxies.values():  # each fault heals itself; this is the backstop
                proxy.set_mode("forward")
        healed = time.monotonic()
        report["chaos_seconds"] = round(healed - chaos.began, 1)
        violations += recovered(fleet, healed)
    finally:
        left = fleet.stop()
        for proxy in proxies.values():
            proxy.close()
    try:
        violations += [f"process left after the stop (killed): {pid}" for pid in left]
        violations += [f"master {s} stopped with status {code}"
                       for s, code in fleet.exit_codes.items() if code != 0]
        for name in SYNC:
            found = fleet.guarded_runs(name)
            violations += [f"{name}: {problem}" for problem in overlaps(found)]
            for generations in chaosdb.generations_by_era(chaos.db, found):
                if generations != sorted(set(generations)):
                    violations.append(f"{name}: generations out of step with starts:"
                                      f" {generations}")
        violations += history_problems(chaos.cluster, fleet, [*SYNC, *LOCAL])
        report["figures"] = figures(chaos, chaos.cluster)
    finally:
        if keep:
            note(f"kept: {fleet.dir}")
        else:
            shutil.rmtree(fleet.dir, ignore_errors=True)
        db.close()
    report["faults"] = [{**asdict(f), "at_s": round(f.start - chaos.began, 1),
                         "seconds": round(f.end - f.start, 1)} for f in chaos.faults]
    report["violations"] = violations
    return report


def figures(chaos: Chaos, cluster: PgCluster) -> dict[str, Any]:
    fleet = chaos.fleet
    found: dict[str, Any] = {"faults": dict(Counter(f.kind for f in chaos.faults))}
    outcomes = cluster.sql("SELECT outcome, count(*) FROM daemon_run GROUP BY outcome",
                           str(fleet.url.database))
    found["history_outcomes"] = {str(o): int(n) for o, n in outcomes}
    gaps: dict[str, Any] = {}
    for name in LOCAL:
        for server in SERVERS:
            own = [f.own_window() for f in chaos.faults if f.target == server
                   and f.kind in ("master-stop", "master-kill", "worker-kill")]
            starts = [e["t"] for e in fleet.starts(server, name)]
            gaps[f"{name}@{server}"] = {"outside_own_faults_s": longest_gap(starts, own),
                                        "overall_s": longest_gap(starts, [])}
    found["non_sync_longest_gap"] = gaps
    found["sync_runs"] = {name: len(fleet.guarded_runs(name)) for name in SYNC}
    found["sync_longest_without_a_run"] = {name: sync_gap(fleet.guarded_runs(name), chaos.faults)
                                           for name in SYNC}
    found["sync_after_promotion"] = chaosdb.sync_after_promotions(
        chaos.db, [run for name in SYNC for run in fleet.guarded_runs(name)])
    return found


def render(report: dict[str, Any], out: TextIO) -> None:
    print(f"chaos: seed {report['seed']}, {report['minutes']:g} min, faults for"
          f" {report.get('chaos_seconds')} s", file=out)
    print("fault log (seconds from the first fault; kind, target, what happened):", file=out)
    for f in report["faults"]:
        print(f"  +{f['at_s']:6.1f}  {f['kind']:<11} {f['target']:<2} {f['seconds']:5.1f} s"
              f"  {f['detail']}", file=out)
    fig = report.get("figures", {})
    print(f"faults injected: {fig.get('faults')}", file=out)
    print(f"history outcomes: {fig.get('history_outcomes')}", file=out)
    print("non-sync longest gap between starts (s), outside the master's own faults / overall:",
          file=out)
    for key, gap in fig.get("non_sync_longest_gap", {}).items():
        print(f"  {key:<8} {gap['outside_own_faults_s']} / {gap['overall_s']}", file=out)
    print("sync: runs, longest time with no run fleet-wide (s), faults it met:", file=out)
    for name, gap in fig.get("sync_longest_without_a_run", {}).items():
        print(f"  {name}: {fig['sync_runs'][name]} runs, {gap['seconds']} s"
              f"  {', '.join(gap['during']) or '-'}", file=out)
    for i, gap in enumerate(fig.get("sync_after_promotion", []), 1):
        print(f"failover {i}: first sync run {gap['since_promotion_s']} s after the promotion"
              f" ({gap['since_crash_s']} s after the crash)", file=out)
    if report["violations"]:
        print(f"INVARIANTS VIOLATED ({len(report['violations'])}):", file=out)
        for line in report["violations"]:
            print(f"  - {line}", file=out)
    else:
        print("invariants: all held (no overlap, one history row per run, nothing left"
              " running or held, clean stops, no process left, every script ran again)",
              file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long faults are injected (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="the faults' seed (default 1)")
    parser.add_argument("--only", nargs="+", choices=sorted(FAULTS), default=None,
                        metavar="KIND", help=f"fault kinds to draw from: {', '.join(FAULTS)}")
    parser.add_argument("--keep", action="store_true",
                        help="keep the masters' directory (logs, records) and print its path")
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got: {args.minutes}")

    def stop(signum: int, _frame: object) -> None:  # finally blocks clean up
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    report = run_chaos(args.minutes, args.seed, args.only, args.keep)
    render(report, sys.stdout)
    if args.json:
        print(json.dumps(report), flush=True)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

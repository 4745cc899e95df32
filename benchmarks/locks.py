"""Lease benchmark: K masters sharing one PostgreSQL, many sync scripts with short periods.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/locks.py                     # K = 1, 4, 16; 20 s each
    .venv/bin/python benchmarks/locks.py --masters 1 4 --seconds 30
    .venv/bin/python benchmarks/locks.py --masters 4 16 --seconds 30 --warmup 10  # steady
    .venv/bin/python benchmarks/locks.py --latency 2000      # one statement's latency

For each K it starts a throwaway PostgreSQL cluster (tests/pg.py, as the tests do), runs K
masters (different --server-name, n_proc 2) over 20 sync scripts and 5 non-sync scripts,
all of period 1 s, and prints:
- lease grants per second (ok runs of sync scripts, from the history table);
- lease statements by kind (counted from the server's statement log, benchmarks/pgfleet.py),
  per grant: those that decide who runs a period, and with the releases and renewals;
- dispatch delay, main() called minus due time, p50/p99, of sync and of non-sync runs
  (from the masters' per-run log lines), the difference being what a lease costs;
- duplicate grants (closer than the period less the tolerance, from a log of the grants the
  database keeps by trigger) and overlapping runs of sync scripts (one starting before the
  previous ended, from history): must be 0;
- wake-ups of each master process per second over the window (its context switches, from
  /proc), median and highest: what hearing every grant of the fleet costs a master (on
  PostgreSQL each grant notifies every master that looks: docs/multi-server.md), and the CPU
  the database's backends serving the masters' connections used over the window (those
  connected when it began; the statement log's own cost included).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from pg import PgCluster  # noqa: E402
from pgfleet import bad_runs, pg_fleet  # noqa: E402
from pgfleet import count_statements as count_lease_statements  # noqa: E402
from scale import pct  # noqa: E402

DELAY = re.compile(r"panda\.master: (\w+) run \d+ outcome=ok duration=[-0-9.]+s"
                   r" delay=(-?[0-9.]+)s")
SYNC, LOCAL, PERIOD = 20, 5, 1.0
DECIDE = ("grant", "contended_update", "loser_read", "table_read", "other_lease")


def one(k: int, seconds: float, count_statements: bool = True, warmup: float = 0) -> None:
    scripts = {f"sync{i:02d}": {"module": "noop", "period": PERIOD, "sync": True}
               for i in range(SYNC)}
    scripts.update({f"local{i:02d}": {"module": "noop", "period": PERIOD}
                    for i in range(LOCAL)})
    with pg_fleet(k, scripts, 2, extra=("heartbeat_interval = 5",),
                  log_statements=count_statements, name="bench") as fleet:
        time.sleep(warmup)  # start-up: each master asks for every script until it knows
        # the other servers (and reads the lease table for each)
        mark = fleet.mark()
        began = fleet.query("SELECT extract(epoch from clock_timestamp())")[0][0]
        switches = {proc.pid: context_switches(proc.pid) for proc in fleet.masters}
        backends = {int(row[0]): cpu_seconds(int(row[0])) for row in fleet.query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()")}
        time.sleep(seconds)  # the measurement window itself
        wakes = sorted((context_switches(pid) - before) / seconds
                       for pid, before in switches.items())
        db_cpu = sum(max(0.0, cpu_seconds(pid) - before) for pid, before in backends.items())
        if warmup:  # the window alone: its statements, and its grants (the trigger's log)
            ended = fleet.query("SELECT extract(epoch from clock_timestamp())")[0][0]
            with fleet.cluster.logfile.open(encoding="utf-8", errors="replace") as handle:
                handle.seek(mark)
                statements = count_lease_statements(handle.read(fleet.mark() - mark))
            grants = fleet.query(
                "SELECT count(*) FROM bench_grant WHERE name LIKE 'sync%' AND at >="
                f" to_timestamp({began}) AND at < to_timestamp({ended})")[0][0]
            fleet.stop()
        else:  # from the start to the stop, against every run's end recorded
            fleet.stop()
            statements = fleet.statements(mark)
            grants = fleet.query("SELECT count(*) FROM daemon_run WHERE outcome ="
                                 " 'ok' AND script LIKE 'sync%'")[0][0]
        overlaps, smallest = bad_runs(fleet.query(
            "SELECT script, extract(epoch from started_at), extract(epoch from ended_at)"
            " FROM daemon_run WHERE outcome = 'ok' AND script LIKE 'sync%'"))
        duplicates = fleet.duplicates(PERIOD)
        delays: dict[str, list[float]] = {"sync": [], "local": []}
        for log in fleet.logs:
            seen: set[str] = set()
            for match in DELAY.finditer(log.read_text(errors="replace")):
                name = match.group(1)
                if name not in seen:  # a script's first run waits for workers to boot
                    seen.add(name)
                    continue
                kind = "sync" if name.startswith("sync") else "local"
                delays[kind].append(float(match.group(2)) * 1000)
    assert isinstance(grants, int)
    print(f"K={k} masters, {SYNC} sync + {LOCAL} non-sync scripts of period {PERIOD:g} s,"
          f" {seconds:g} s" + (f" after {warmup:g} s of warm-up (grants: the database's log of"
                               " them in the window)" if warmup else
                               " from the start (grants: ok runs of sync scripts)"))
    print(f"  lease grants: {grants} ({grants / seconds:.1f}/s; ideal {SYNC / PERIOD:.0f}/s)")
    if grants and count_statements:
        decide = sum(statements.get(kind, 0) for kind in DECIDE)
        print(f"  lease statements {statements}: {decide / grants:.2f} per grant to decide"
              f" who runs, {sum(statements.values()) / grants:.2f} with releases and renewals")
        print("  per grant, by kind: " + ", ".join(
            f"{kind} {count / grants:.2f}" for kind, count in sorted(statements.items())))
    for kind, values in delays.items():
        if values:
            print(f"  dispatch delay ms, {kind}: p50 {statistics.median(values):.2f}"
                  f"  p99 {pct(values, 99):.2f}  ({len(values)} runs)")
    print(f"  master wake-ups/s: median {statistics.median(wakes):.1f}, highest {wakes[-1]:.1f};"
          " database CPU (the backends of the masters' connections): "
          + (f"{db_cpu / seconds:.1%} of a core" if backends else
             "not measured (no master was connected yet when the window began: --warmup)"))
    print(f"  grants too close (under period - tolerance): {duplicates};"
          f" overlapping sync runs: {overlaps}"
          f" (smallest start-to-start gap {smallest * 1000:.1f} ms)")


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of one process so far (/proc)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


def cpu_seconds(pid: int) -> float:
    """CPU seconds one process has used so far (/proc schedstat; 0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def latency(calls: int) -> None:
    """Statement latency and count of one grant and one refusal, in this process, on a
    throwaway PostgreSQL, with the master's engine settings (autocommit, no pre-ping)."""
    from sqlalchemy import event

    from pandaserver.db.base.engine import engine_from_url
    from pandaserver.db.base.schema import upgrade
    from pandaserver.db.stores.leases import LeaseStore

    cluster = PgCluster()
    cluster.start()
    try:
        engine = engine_from_url(cluster.create_database("latency"), autocommit=True,
                                 pre_ping=False)
        upgrade(engine)
        store = LeaseStore(engine)
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
        store.try_acquire("held", "other", 1, period=3600, ttl=3600)
        cases = {  # ttl 0: the lease has expired by the next call, so every call is granted
            "grant": lambda: store.try_acquire("free", "bench", 1, period=0, ttl=0),
            "refusal": lambda: store.try_acquire("held", "bench", 1, period=3600, ttl=3600),
        }
        for what, call in cases.items():
            for _ in range(min(100, calls)):  # warm: connection, statement cache
                call()
            sent.clear()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                result = call()
                times.append((time.perf_counter() - t0) * 1000)
                assert result.granted == (what == "grant")
            print(f"  {what}: median {statistics.median(times):.3f} ms,"
                  f" p99 {pct(times, 99)} ms, {len(sent) / calls:.2f} statements"
                  f" ({calls} calls)")
        engine.dispose()
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masters", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=0, metavar="SECONDS",
                        help="measure a window that begins this long after the start: its"
                             " statements against its grants (default 0: from the start to"
                             " the stop, against the ok runs, as before)")
    parser.add_argument("--no-statement-log", action="store_true",
                        help="do not count statements (the server then logs none, so the"
                             " delays are those of an ordinary server)")
    parser.add_argument("--latency", type=int, metavar="CALLS",
                        help="instead: time CALLS grants and CALLS refusals of one lease"
                             " statement in this process (no masters)")
    args = parser.parse_args()
    if args.latency:
        latency(args.latency)
        return
    for k in args.masters:
        one(k, args.seconds, count_statements=not args.no_statement_log, warmup=args.warmup)


if __name__ == "__main__":
    main()

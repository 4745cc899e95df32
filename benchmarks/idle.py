"""Idle benchmark: what a master with nothing to do costs, and how fast a pause reaches it.

Usage (prints figures; asserts nothing):
    .venv/bin/python benchmarks/idle.py                       # SQLite then PostgreSQL, 60 s
    .venv/bin/python benchmarks/idle.py --seconds 30 --backends postgresql
    .venv/bin/python benchmarks/idle.py --threads             # a row per thread as well
    .venv/bin/python benchmarks/idle.py --pauses 10 --masters 2
    .venv/bin/python benchmarks/idle.py --against /tmp/main-src     # another build, same window

One master (``--masters`` for more on PostgreSQL) of the default layout: n_proc 4, five
no-op scripts of period 600 s. After the start-up runs and a warm-up, a window of
``--seconds``: the CPU time (``/proc/PID/task/*/schedstat``, nanoseconds on a core) and the
wake-ups (voluntary + non-voluntary context switches, ``/proc/PID/task/*/status``) of every
process of the daemon (master and workers, all their threads), and on PostgreSQL the CPU of
the server backends connected to the daemon's database (their pids from
``pg_stat_activity``, read before and after the window). Then, on PostgreSQL, ``--pauses``
times ``panda-daemon pause`` / ``resume`` of a script: the time from the command's row
(``daemon_command.requested_at``) to each master's acknowledgement
(``daemon_command_ack.acted_at``), both on the database's clock.

``--against DIR`` (a checkout of another build, e.g. ``git archive main | tar -x -C DIR``)
also starts that build's master (its own state directory, on PostgreSQL its own database
of the same server) and measures both in the same window: load on the machine touches
both alike, which figures taken one after the other on a shared machine do not show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from pg import PgCluster, url_text  # noqa: E402
from scale import env, start_master, stop_all, tree, write_config  # noqa: E402

PERIOD = 600.0
SCRIPTS = 5
N_PROC = 4
TICK = 1e-9  # schedstat counts nanoseconds


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Sample:
    """CPU seconds and context switches, per (pid, tid) of the processes sampled."""

    cpu: dict[tuple[int, int], float] = field(default_factory=dict)
    switches: dict[tuple[int, int], int] = field(default_factory=dict)
    forced: dict[tuple[int, int], int] = field(default_factory=dict)  # non-voluntary
    names: dict[tuple[int, int], str] = field(default_factory=dict)


def sample(pids: list[int]) -> Sample:
    out = Sample()
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            base = Path(f"/proc/{pid}/task/{tid}")
            try:
                ns = int(base.joinpath("schedstat").read_text().split()[0])
                status = base.joinpath("status").read_text()
                comm = base.joinpath("comm").read_text().strip()
            except (OSError, ValueError, IndexError):
                continue
            switches = forced = 0
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
                if line.startswith("nonvoluntary_ctxt_switches"):
                    forced += int(line.split()[1])
            out.cpu[(pid, tid)] = ns * TICK
            out.switches[(pid, tid)] = switches
            out.forced[(pid, tid)] = forced
            out.names[(pid, tid)] = comm
    return out


def delta(before: Sample, after: Sample) -> tuple[dict[tuple[int, int], float],
                                                  dict[tuple[int, int], int]]:
    """Per thread: CPU seconds and switches in the window (a thread born in it counts
    from zero; one that ended in it is not seen)."""
    cpu = {k: v - before.cpu.get(k, 0.0) for k, v in after.cpu.items()}
    sw = {k: v - before.switches.get(k, 0) for k, v in after.switches.items()}
    return cpu, sw


def daemon_pids(masters: list[subprocess.Popen[bytes]], label: str = "") -> dict[int, str]:
    """pid -> role (master, worker; ``label`` appended) of every process of the daemon."""
    roles: dict[int, str] = {}
    for proc in masters:
        for p in tree(proc.pid):
            roles[p.pid] = ("master" if p.pid == proc.pid else "worker") + label
    return roles


def wait_runs(logs: list[Path], runs: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if all(log.exists() and log.read_text(errors="replace").count(" outcome=") >= runs
               for log in logs):
            return
        time.sleep(0.2)
    say("  (the start-up runs did not all end in time: measuring anyway)")


def scripts() -> dict[str, dict[str, Any]]:
    return {f"idle{i}": {"module": "noop", "period": PERIOD} for i in range(SCRIPTS)}


AGAINST = " (against)"  # appended to the roles of the other build's processes


def measure(masters: list[subprocess.Popen[bytes]], seconds: float,
            backends: dict[str, Any], against: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    """The window: per role, CPU seconds, switches and forced switches; per database
    (``backends``: key -> function listing its server backends' pids) the same summed."""
    roles = daemon_pids(masters)
    roles.update(daemon_pids(against, AGAINST))
    pg_pids = {key: find() for key, find in backends.items()}
    pg_before = sample([pid for pids in pg_pids.values() for pid in pids])
    before = sample(list(roles))
    started = time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    after = sample(list(roles))
    elapsed = time.monotonic() - started
    pg_after = sample([pid for pids in pg_pids.values() for pid in pids])
    cpu, sw = delta(before, after)
    by_role: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for key in cpu:
        role = roles[key[0]]
        by_role[role][0] += cpu[key]
        by_role[role][1] += sw[key]
        by_role[role][2] += after.forced[key] - before.forced.get(key, 0)
    result: dict[str, Any] = {"elapsed": elapsed, "roles": dict(by_role), "threads": [
        (roles[k[0]], k[0], k[1], after.names[k], cpu[k], sw[k]) for k in sorted(cpu)]}
    pcpu, psw = delta(pg_before, pg_after)
    for key, pids in pg_pids.items():
        result[key] = (sum(v for k, v in pcpu.items() if k[0] in pids),
                       sum(v for k, v in psw.items() if k[0] in pids), len(pids))
    return result


def pause_latency(cfg: Path, cluster: PgCluster, dbname: str, count: int,
                  masters: int) -> list[float]:
    """Seconds from each pause/resume row to each master's acknowledgement."""
    latencies: list[float] = []
    for i in range(count):
        verb = "pause" if i % 2 == 0 else "resume"
        done = subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c",
                               str(cfg), verb, "idle0", "--wait", "--timeout", "30"],
                              env=env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            say(f"  {verb} exited {done.returncode}: {done.stdout.strip()} {done.stderr.strip()}")
        rows = cluster.sql(
            "SELECT EXTRACT(EPOCH FROM a.acted_at - c.requested_at) FROM daemon_command c"
            " JOIN daemon_command_ack a ON a.command_id = c.id"
            " WHERE c.id = (SELECT max(id) FROM daemon_command)", dbname)
        if len(rows) < masters:
            say(f"  {verb}: {len(rows)} of {masters} masters acknowledged")
        latencies += [float(r[0]) for r in rows]
    return latencies


def run_backend(backend: str, seconds: float, warmup: float, masters_count: int,
                pauses: int, against: Path | None = None) -> dict[str, Any]:
    cluster: PgCluster | None = None
    dbname = "idle"
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        urls: dict[str, str | None] = {dbname: None}
        if against is not None:
            urls["idle_against"] = None
        try:
            if backend == "postgresql":
                cluster = PgCluster()
                cluster.start()
                urls = {name: url_text(cluster.create_database(name)) for name in urls}
            cfgs = {}
            for name, url in urls.items():
                (directory / name).mkdir()
                cfgs[name] = write_config(directory / name, scripts(), N_PROC, url)
                if url is not None:
                    subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c",
                                    str(cfgs[name]), "db", "upgrade"], check=True, env=env(),
                                   capture_output=True)
            cfg = cfgs[dbname]
            count = masters_count if backend == "postgresql" else 1
            logs = [directory / f"m{i}.log" for i in range(count)]
            masters = [start_master(cfg, log, f"idle{i:02d}", directory / f"state{i}")
                       for i, log in enumerate(logs)]
            others = []
            if against is not None:  # the other build: its own tree on the module path
                logs.append(directory / "against.log")
                others.append(start_master(
                    cfgs["idle_against"], logs[-1], "against", directory / "state-against",
                    PYTHONPATH=os.pathsep.join([str(HERE / "scripts_pkg"), str(against)])))
            try:
                wait_runs(logs, SCRIPTS, time.monotonic() + 60)
                time.sleep(warmup)
                backends: dict[str, Any] = {}
                if cluster is not None:
                    pg = cluster

                    def finder(name: str) -> Any:
                        return lambda: [int(r[0]) for r in pg.sql(
                            f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'"
                            " AND pid <> pg_backend_pid()")]

                    backends = {"pg" if name == dbname else "pg_against": finder(name)
                                for name in urls}
                say(f"{backend}: {count} master(s) up{' and one of ' + str(against) if against else ''};"
                    f" measuring {seconds:g} s")
                result = measure(masters, seconds, backends, others)
                if cluster is not None and pauses:
                    result["pauses"] = pause_latency(cfg, cluster, dbname, pauses, count)
                result["masters"] = count
                return result
            finally:
                left = stop_all(masters + others)
                if left:
                    say(f"  left running after the stop: {left}")
        finally:
            if cluster is not None:
                cluster.stop()


def show(backend: str, result: dict[str, Any], threads: bool) -> None:
    elapsed = result["elapsed"]
    print(f"{backend}: {result['masters']} master(s), n_proc {N_PROC}, {SCRIPTS} scripts of"
          f" {PERIOD:g} s, {elapsed:.1f} s window")
    print(f"  {'who':<32} {'CPU % of a core':>16} {'wake-ups/s':>11} {'(forced)':>9}")
    for label, pg in (("", "pg"), (AGAINST, "pg_against")):
        rows = sorted((role, figures) for role, figures in result["roles"].items()
                      if role.endswith(label) and (label or not role.endswith(AGAINST)))
        if not rows:
            continue
        total_cpu = total_sw = total_forced = 0.0
        for role, (cpu, sw, forced) in rows:
            total_cpu += cpu
            total_sw += sw
            total_forced += forced
            print(f"  {role:<32} {100 * cpu / elapsed:>16.4f} {sw / elapsed:>11.2f}"
                  f" {forced / elapsed:>9.2f}")
        print(f"  {'master + workers' + label:<32} {100 * total_cpu / elapsed:>16.4f}"
              f" {total_sw / elapsed:>11.2f} {total_forced / elapsed:>9.2f}")
        if pg in result:
            cpu, sw, n = result[pg]
            print(f"  {f'PostgreSQL ({n} backends){label}':<32} {100 * cpu / elapsed:>16.4f}"
                  f" {sw / elapsed:>11.2f}")
    if threads:
        for role, pid, tid, name, cpu, sw in result["threads"]:
            if sw or cpu:
                print(f"    {role:<17} {pid:>7} {tid:>7} {name:<16}"
                      f" {100 * cpu / elapsed:>9.4f} {sw / elapsed:>8.2f}")
    if result.get("pauses"):
        lat = result["pauses"]
        print(f"  pause/resume to acknowledgement ({len(lat)}): median"
              f" {statistics.median(lat):.3f} s, max {max(lat):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the window (default 60)")
    parser.add_argument("--warmup", type=float, default=65.0,
                        help="seconds after the start-up runs before the window (default 65:"
                             " past the first command read after the start's, which may"
                             " compile its statement)")
    parser.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"),
                        default=["sqlite", "postgresql"])
    parser.add_argument("--masters", type=int, default=1,
                        help="masters on PostgreSQL (default 1)")
    parser.add_argument("--pauses", type=int, default=6,
                        help="pause/resume commands timed on PostgreSQL (default 6)")
    parser.add_argument("--threads", action="store_true", help="a row per thread as well")
    parser.add_argument("--against", type=Path, default=None, metavar="DIR",
                        help="also a master of the build checked out in DIR, same window")
    args = parser.parse_args()
    if args.against is not None and not (args.against / "pandaserver").is_dir():
        parser.error(f"--against {args.against}: no pandaserver package there; give the"
                     " root of a checkout (git archive main | tar -x -C DIR)")
    for backend in args.backends:
        result = run_backend(backend, args.seconds, args.warmup, args.masters, args.pauses,
                             args.against)
        show(backend, result, args.threads)


if __name__ == "__main__":
    main()

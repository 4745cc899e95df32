"""A run's end and a worker's kill look at what the kernel lists below the master rather
than walk every process (``processes.tree_of``, ``Containment.run_processes``), and find
the same processes as the walk. Real processes, in a subprocess that is a subreaper (as a
master is), so that this test's own process is left as it is."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = r"""
import atexit, contextlib, json, os, signal, subprocess, time
from pandaserver.daemons.base.runs import Run
from pandaserver.daemons.containment import processes, proctable
from pandaserver.daemons.containment.tracker import Containment

assert proctable.set_child_subreaper() and proctable.is_child_subreaper()
me = os.getpid()
scans = []
real_scan = proctable.scan
def counted():
    scans.append(1)
    return real_scan()
proctable.scan = counted
def run(pid):
    return Run(id=pid, script="s", worker=1, pid=pid, due=0, dispatched=0, timeout_at=1)
tracker = Containment(pid=me)
quiet = subprocess.Popen(["sleep", "63"], start_new_session=True,  # a worker with no child
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
atexit.register(quiet.kill)
while not proctable.cmdline(quiet.pid).startswith("sleep"):
    time.sleep(0.01)
tracker.worker_started(1, quiet.pid)
quiet_left = tracker.run_processes(run(quiet.pid))
quiet_scans = len(scans)
# a worker-like group leader: a child, and an orphan of a subshell that stays in its group
leader = subprocess.Popen(["sh", "-c", "sleep 60 & (sleep 61 &); sleep 62; true"],
                          start_new_session=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
@atexit.register
def end_group():
    with contextlib.suppress(OSError):
        os.killpg(leader.pid, signal.SIGKILL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:  # the orphan has come to us, the shell has its children
    orphans = set(proctable.children_of(me)) - {leader.pid, quiet.pid}
    kids = [proctable.stat(pid) for pid in proctable.children_of(leader.pid)]
    if orphans and len(kids) == 2 and all(k is not None and not k.ended for k in kids):
        break
    time.sleep(0.01)
cheap = sorted(p.pid for p in processes.tree_of(leader.pid))
walked = sorted(p.pid for p in processes._tree_by_walk(leader.pid))

tracker.worker_started(2, leader.pid)
leader_left = sorted(p.pid for p in tracker.run_processes(run(leader.pid)))
print(json.dumps({"cheap": cheap, "walked": walked, "orphans": sorted(orphans),
                  "quiet_left": len(quiet_left), "quiet_scans": quiet_scans,
                  "leader_scans": len(scans) - quiet_scans, "leader_left": leader_left,
                  "leader": leader.pid}))
"""


def _probe() -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_tree_the_kernel_lists_below_a_subreaper_is_the_walks_orphans_included() -> None:
    found = _probe()
    assert found["cheap"] == found["walked"]
    assert len(found["walked"]) == 4  # the shell, its two children, the orphan in its group
    assert set(found["orphans"]) <= set(found["walked"])  # type: ignore[arg-type]
    # a worker alone: nothing to walk for; one with processes: the walk finds them all
    assert (found["quiet_left"], found["quiet_scans"]) == (0, 0)
    assert found["leader_scans"] == 1
    assert found["leader_left"] == sorted(set(found["walked"]) - {found["leader"]})  # type: ignore[arg-type]

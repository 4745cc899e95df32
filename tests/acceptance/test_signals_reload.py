"""Signals to a real master: a second stop signal, and SIGHUP's promises about changed
scripts and fewer workers (docs/scheduling.md, "Signals")."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from harness import MasterProcess, pid_alive, running_master, wait_for, write_config

pytestmark = pytest.mark.serial  # timing bounds of 0.8 s: run alone (tests/README.md)
SLACK = 0.8  # seconds of lag a lower bound tolerates (a loaded 2-core machine)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_stop_signal_kills_what_runs_at_once(tmp_path: Path,
                                                      sig: signal.Signals) -> None:
    # The script ignores SIGTERM and the stop grace is 120 s: only the second signal can end
    # this master soon (its run is killed, SIGKILL one second after SIGTERM).
    cfg = write_config(tmp_path, {"stuck": {"module": "hang", "period": 60, "timeout": 300,
                                            "arguments": ["stubborn"]}}, stop_grace=120)
    with running_master(cfg, tmp_path) as master:
        first = master.wait_events(1, "start", "stuck")[0]
        master.signal(sig)
        master.wait_log(f"got {sig.name}: stopping")
        assert master.proc.poll() is None  # the first signal waits for the run
        master.signal(sig)
        assert master.proc.wait(30) == 0, "the second signal did not stop the master at once"
        log = master.log()
    assert f"second {sig.name}: killing what still runs" in log
    assert master.outcomes("stuck") == ["lost"] and "killed at shutdown" in log
    assert not pid_alive(first["pid"]) and not pid_alive(first["child"])


def _started(master: MasterProcess, name: str, count: int, timeout: float = 30) -> list[float]:
    return [e["t"] for e in master.wait_events(count, "start", name, timeout=timeout)]


def test_reload_keeps_a_changed_scripts_place_in_time(tmp_path: Path) -> None:
    # "same" keeps its period of 10 s (its arguments change): its next run stays 10 s after
    # the last start, not now and not 10 s after the reload. "shorter" goes from 30 s to 6 s:
    # its next run moves earlier, to 6 s after the last start. The reload comes 4 s after
    # those starts, so each wrong answer lands seconds away from the right one.
    cfg = write_config(tmp_path, {"same": {"module": "record", "period": 10},
                                  "shorter": {"module": "record", "period": 30}})
    with running_master(cfg, tmp_path) as master:
        same = _started(master, "same", 1)[0]
        shorter = _started(master, "shorter", 1)[0]
        wait_for(lambda: time.monotonic() >= max(same, shorter) + 4, 10, "4 s after the starts")
        write_config(tmp_path, {"same": {"module": "record", "period": 10,
                                         "arguments": ["changed"]},
                                "shorter": {"module": "record", "period": 6}})
        master.signal(signal.SIGHUP)
        master.wait_log("reload: configuration applied")
        assert "reload: script same changed" in master.log()
        assert "reload: script shorter changed" in master.log()
        same_next = master.wait_events(2, "start", "same", timeout=20)[1]
        shorter_next = _started(master, "shorter", 2, timeout=20)[1]
    assert same_next["argv"] == ["same", "changed"]  # the new settings were applied
    # never before its place in time (the slack: the first start was recorded by the
    # worker, a moment after the master dispatched it)
    assert same_next["t"] >= same + 10 - SLACK, "the changed script ran before its time"
    assert same_next["t"] <= same + 10 + 2.5, "the changed script lost its place in time"
    assert shorter_next >= shorter + 6 - SLACK, "moved earlier than its new period allows"
    assert shorter_next <= shorter + 6 + 2.5, "not moved earlier by its shorter period"


def test_reload_with_fewer_workers_retires_the_extra_ones_after_their_run(
        tmp_path: Path) -> None:
    # Three workers each run a 5 s script when n_proc drops to 1: the runs finish (ok, not
    # killed), workers 2 and 3 then exit and are not replaced; worker 1 goes on alone.
    long = {"module": "record", "period": 60, "timeout": 30, "arguments": [5.0]}
    scripts = {"a": long, "b": long, "c": long,
               "z_tick": {"module": "record", "period": 0.3}}
    cfg = write_config(tmp_path, scripts, n_proc=3)
    with running_master(cfg, tmp_path) as master:
        for name in "abc":
            master.wait_events(1, "start", name)
        assert master.events("end", "a") == [], "the runs must still go on at the reload"
        write_config(tmp_path, scripts, n_proc=1)
        master.signal(signal.SIGHUP)
        master.wait_log("reload: configuration applied (4 scripts, 1 workers)")
        for name in "abc":
            wait_for(lambda n=name: master.outcomes(n), 20, f"the run of {name} to end")
        retired = wait_for(lambda: len(master.workers()) == 1 and master.workers(), 20,
                           "the extra workers to exit")
        ticks = len(master.events("start", "z_tick"))
        master.wait_events(ticks + 3, "start", "z_tick")  # the master went on with one worker
        assert [p.pid for p in master.workers()] == [retired[0].pid]
        log = master.log()
    assert [master.outcomes(name) for name in "abc"] == [["ok"]] * 3
    started = {int(i): int(pid) for i, pid in re.findall(r"worker (\d) started \(pid (\d+)\)", log)}
    assert sorted(started) == [1, 2, 3], "a retired worker was replaced"
    assert retired[0].pid == started[1]
    for index in (2, 3):
        pid = started[index]
        ran = next(e["name"] for e in master.events("start") if e["pid"] == pid)
        exited = log.index(f"worker {index} (pid {pid}) exited with status 0")
        assert log.index(f"{ran} run ") < exited, f"worker {index} left before its run ended"
        assert "killing its process tree" not in log

"""The master schedules real scripts in real worker processes."""

from __future__ import annotations

import signal
from itertools import pairwise
from pathlib import Path

from harness import running_master, wait_for, write_config

EPS = 0.02  # clock granularity between processes


def test_runs_at_startup_then_once_per_period_never_early(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 0.5}})
    with running_master(cfg, tmp_path) as master:
        starts = [e["t"] for e in master.wait_events(5, "start", "tick")]
        gaps = [b - a for a, b in pairwise(starts)]
        # The first run waits for the workers to start; later runs keep the due-time grid.
        assert all(gap >= 0.5 - EPS for gap in gaps[1:]), gaps
        assert all(s - starts[1] >= k * 0.5 - EPS for k, s in enumerate(starts[1:])), starts
        assert all(gap < 0.5 + 0.4 for gap in gaps), f"a period was skipped: {gaps}"
        assert master.stop() == 0
    assert master.outcomes("tick")[:5] == ["ok"] * 5


def test_arguments_reach_main_as_argv(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"named": {"module": "record", "period": 60,
                                            "arguments": [0, "x"]}})
    with running_master(cfg, tmp_path) as master:
        event = master.wait_events(1, "start", "named")[0]
        assert event["argv"] == ["named", 0, "x"]
        assert event["run"] >= 1


def test_overrun_delays_next_run_without_overlap_or_burst(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"slow": {"module": "record", "period": 0.4,
                                           "arguments": [1.0]}}, n_proc=3)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(3, "end", "slow", timeout=20)
        starts = [e["t"] for e in master.events("start", "slow")]
        ends = [e["t"] for e in master.events("end", "slow")]
        for i in range(2):
            assert ends[i] <= starts[i + 1], "two runs of one script overlapped"
            assert starts[i + 1] - ends[i] < 0.3, "the next run did not start right after"
        master.wait_log("longer than its period")


def test_loop_mode_stops_on_false(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"lp": {"module": "looper", "period": 30, "loop": True,
                                         "arguments": [3]}})
    with running_master(cfg, tmp_path) as master:
        master.wait_log("lp run 1 outcome=ok")
        calls = master.events("call", "lp")
        assert [c["n"] for c in calls] == [1, 2, 3]


def test_loop_mode_stops_when_period_has_passed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"lp": {"module": "looper", "period": 1.0, "loop": True,
                                         "timeout": 10, "arguments": [-1, 0.1]}})
    with running_master(cfg, tmp_path) as master:
        master.wait_log("lp run 1 outcome=ok")
        first = [c for c in master.events("call", "lp") if c["run"] == 1]
        span = first[-1]["t"] - first[0]["t"]
        assert 0.8 <= span + 0.1 <= 1.5, span  # calls kept coming until the period was over
        assert len(first) >= 5


def test_worker_recycling_loses_no_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 0.5}},
                       n_proc=2, proc_lifetime=2)
    with running_master(cfg, tmp_path) as master:
        master.wait_log("reached its lifetime", count=3, timeout=20)
        # a replacement takes runs once it has started, which a loaded machine may delay
        wait_for(lambda: len({e["pid"] for e in master.events("start", "tick")}) >= 3, 20,
                 "a replaced worker's successor to run the script")
        starts = master.events("start", "tick")
        times = [e["t"] for e in starts]
        gaps = [b - a for a, b in pairwise(times)]
        # every period was served: no gap spans a whole period without a run
        assert max(gaps) < 2 * 0.5 - EPS, f"a scheduled run was lost during recycling: {gaps}"
        assert min(gaps[1:]) >= 0.5 - EPS  # the first run waited for the workers to start


def test_staggered_lifetimes_do_not_restart_together(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}},
                       n_proc=2, proc_lifetime=2)
    with running_master(cfg, tmp_path) as master:
        master.wait_log("reached its lifetime", count=2, timeout=20)
        lines = [line for line in master.log().splitlines() if "reached its lifetime" in line]
        assert "worker 2" in lines[0] and "worker 1" in lines[1]


def test_sigterm_lets_running_script_finish(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"slow": {"module": "record", "period": 60,
                                           "arguments": [1.0]}})
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "slow")
        master.signal(signal.SIGTERM)
        assert master.proc.wait(20) == 0
        assert len(master.events("end", "slow")) == 1
        assert master.outcomes("slow") == ["ok"]


def test_sigterm_kills_what_outlasts_the_grace(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"stuck": {"module": "hang", "period": 60}}, stop_grace=0.5)
    with running_master(cfg, tmp_path) as master:
        child = master.wait_events(1, "start", "stuck")[0]["child"]
        master.signal(signal.SIGINT)
        assert master.proc.wait(20) == 0
        assert master.outcomes("stuck") == ["lost"]
        assert "killed at shutdown" in master.log()
        from harness import pid_alive

        wait_for(lambda: not pid_alive(child), 5, "the script's child to be killed")


def test_disabled_script_does_not_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"off": {"module": "record", "period": 0.2, "enable": False},
                                  "on": {"module": "record", "period": 0.2}})
    with running_master(cfg, tmp_path) as master:
        master.wait_events(3, "start", "on")
        assert master.events("start", "off") == []


def test_reload_on_sighup_applies_changes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"a": {"module": "record", "period": 60}})
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "a")
        write_config(tmp_path, {"b": {"module": "record", "period": 60}})
        master.signal(signal.SIGHUP)
        master.wait_events(1, "start", "b")
        master.wait_log("reload: script a removed")
        good = cfg.read_text()
        cfg.write_text(good.replace('"b": {', '"b": {,'))  # a JSON typo: would drop every script
        master.signal(signal.SIGHUP)
        master.wait_log("reload refused")
        cfg.write_text(good.replace("package = testscripts", "n_proc = zero"))
        master.signal(signal.SIGHUP)
        master.wait_log("reload refused", count=2)
        assert "reload: script b removed" not in master.log()
        count = len(master.events("start", "b"))
        write_config(tmp_path, {"b": {"module": "record", "period": 0.2}})
        master.signal(signal.SIGHUP)
        master.wait_events(count + 2, "start", "b")  # still running, with the new period


def test_reload_removing_and_re_adding_a_running_script_never_overlaps(tmp_path: Path) -> None:
    slow = {"slow": {"module": "record", "period": 0.2, "timeout": 10, "arguments": [1.5]}}
    cfg = write_config(tmp_path, slow, n_proc=2)
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "slow")
        write_config(tmp_path, {"other": {"module": "record", "period": 60}}, n_proc=2)
        master.signal(signal.SIGHUP)
        master.wait_log("reload: script slow removed")
        write_config(tmp_path, slow, n_proc=2)
        master.signal(signal.SIGHUP)
        master.wait_log("reload: script slow added back")
        master.wait_events(2, "start", "slow")
        starts = master.events("start", "slow")
        ends = master.events("end", "slow")
        assert ends and ends[0]["t"] <= starts[1]["t"], "the script ran twice at once"

"""Scripts that misbehave the way real housekeeping scripts do: each gets its outcome, a
healthy script beside them keeps its schedule, and nothing is left after ``stop``."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from harness import MasterProcess, pid_alive, running_master, wait_for, write_config

pytestmark = pytest.mark.alone  # its scripts load the machine: run alone (tests/README.md)
ABUSERS = {  # name: (how it misbehaves, the outcome it must get, a line the log must have)
    "a_sys_exit": ("sys_exit", "lost", "script called sys.exit(3)"),
    "a_os_exit": ("os_exit", "lost", "exited with status 7"),
    "a_segv": ("segv", "lost", "killed by SIGSEGV"),
    "a_keyboard": ("keyboard", "failed", "script raised KeyboardInterrupt"),
    "a_output": ("output", "ok", "x" * 1023),
    # named by pid and command line as read at that moment (a child forked but not yet
    # exec'd, or one already dying, may show no command line of its own)
    "a_daemon": ("daemon", "ok", "a_daemon run 1 left 1 process: SIGTERM now"),
    "a_stubborn": ("stubborn_child", "timeout", "killing its process tree: a_stubborn run "),
}
TICK = 1.0
SLACK = 3.0  # seconds of delay a loaded two-core machine may add to a run's start


class MasterLines:
    """The master's own lines of a log that grows by 50 MB: read once, incrementally."""

    def __init__(self, master: MasterProcess) -> None:
        self.master = master
        self.offset = 0
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def update(self) -> list[str]:
        with self.master.log_path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        for line in data[:complete].decode(errors="replace").splitlines():
            if "panda.master:" in line:
                self.lines.append(line)
            for _, _, wanted in ABUSERS.values():
                if wanted in line:
                    self.seen.add(wanted)
        return self.lines

    def outcome(self, name: str) -> str | None:
        for line in self.update():
            if f"panda.master: {name} run " in line and " outcome=" in line:
                return line.split(" outcome=")[1].split()[0]
        return None


def test_each_abusive_script_gets_its_outcome_and_a_healthy_one_keeps_its_schedule(
        tmp_path: Path) -> None:
    scripts = {name: {"module": "abuse", "period": 600, "arguments": [how],
                      "timeout": 2 if outcome == "timeout" else 120}
               for name, (how, outcome, _) in ABUSERS.items()}
    scripts["tick"] = {"module": "record", "period": TICK}
    cfg = write_config(tmp_path, scripts, n_proc=len(scripts))
    with running_master(cfg, tmp_path, log_level="INFO") as master:
        lines = MasterLines(master)
        for name, (_, outcome, _) in ABUSERS.items():
            got = wait_for(lambda n=name: lines.outcome(n), 60, f"the outcome of {name}")
            assert got == outcome, f"{name}: {got}, not {outcome}"
        ticks = len(master.events("start", "tick"))
        master.wait_events(ticks + 3, "start", "tick", timeout=20)
        assert master.stop() == 0
        assert master.leftovers() == [], "processes left after stop"
        lines.update()
    assert lines.seen == {wanted for _, _, wanted in ABUSERS.values()}, lines.seen
    started = {row["name"]: row for row in master.events("start")}
    assert not pid_alive(started["a_daemon"]["pids"][0])
    assert not pid_alive(started["a_stubborn"]["pids"][0])
    times = [row["t"] for row in master.events("start", "tick")]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(times) >= 5 and max(gaps) <= TICK + SLACK, gaps
    for name in ABUSERS:  # each ran once: its failure did not make it run again and again
        assert len(master.events("start", name)) == 1, name

"""The status file: the loop captures, one thread writes (``pandaserver.daemons.master.statusfile``).

A stand-in master of plain values (the status code reads the attributes of the master's
collaborators only: the pool, the dispatcher and the controls); real files in
``tmp_path``. No timing is asserted: where a write must be held back, an event holds it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet.contention import Contentions
from pandaserver.daemons.master import statusfile as status
from pandaserver.daemons.master.crashloop import CrashLoops
from pandaserver.daemons.master.schedule import ScriptState
from pandaserver.daemons.master.timetable import Timetable
from pandaserver.db.stores.operator_commands import Hold

WAIT = 30.0  # a deadline for what takes milliseconds


def fake_master(count: int = 3) -> Any:
    names = [f"s{i}" for i in range(count)]
    return SimpleNamespace(
        server="srv", started=0.0, fleet=None,
        pool=SimpleNamespace(slots={}, stopping=False, n_proc=2),
        dispatcher=SimpleNamespace(
            scripts=Timetable({n: ScriptState(DaemonSpec(name=n, module="m", period=10.0,
                                                         timeout=30.0), next_due=100.0)
                               for n in names}),
            unimportable=set(), last_outcomes={}, refusals=SimpleNamespace(contention=Contentions())),
        controls=SimpleNamespace(crashes=CrashLoops(60.0), paused={}, drain_hold=None))


def hold(name: str, reason: str) -> Hold:
    return Hold(kind="pause", name=name, server="*", command_id=1, requested_by="ops",
                reason=reason, since=datetime.now(UTC))


def scripts_of(path: Path) -> dict[str, dict[str, Any]]:
    data = status.read_status(path)
    assert data is not None
    return {s["name"]: s for s in data["scripts"]}


def test_the_file_holds_the_state_redacted(tmp_path: Path) -> None:
    master = fake_master()
    master.dispatcher.last_outcomes["s0"] = ("failed", 90.0)
    master.controls.paused["s1"] = hold("s1", "db at postgresql://panda:hunter2@db/x is moving")
    master.controls.crashes.crashed("s2", 95.0, "boom")
    path = tmp_path / "status-srv.json"
    sf = status.StatusFile(path)
    assert sf.tick(master, 98.0) is None
    sf.close(master, 98.0)
    data = status.read_status(path)
    assert data is not None and data["server"] == "srv" and data["n_proc"] == 2
    rows = scripts_of(path)
    assert list(rows) == ["s0", "s1", "s2"]
    assert rows["s0"]["last_outcome"] == "failed" and rows["s0"]["last_ended_ago"] == 8.0
    assert rows["s0"]["next_due_in"] == 2.0 and rows["s0"]["period"] == 10.0
    assert rows["s1"]["paused"] and rows["s1"]["paused_by"] == "ops"
    assert "hunter2" not in rows["s1"]["paused_reason"]
    assert rows["s2"]["crashes"] == 1 and not rows["s2"]["crash_looping"]
    rendered = status.render(status.capture(master, 98.0))["scripts"]  # as written, but
    assert [rendered[0], rendered[2]] == [data["scripts"][0], data["scripts"][2]]  # redacted


def test_a_capture_shares_nothing_the_loop_changes_after(tmp_path: Path) -> None:
    master = fake_master()
    master.dispatcher.refusals.contention.note("s2", "other", 40.0)
    cap = status.capture(master, 50.0)
    master.dispatcher.refusals.contention.note("s2", "third", 49.0)
    master.dispatcher.refusals.contention.note("s0", None, 49.0)
    scripts = master.dispatcher.scripts
    scripts.set_due(scripts["s0"], 70.0)
    scripts.started(scripts["s1"], 7, 49.0, scripts["s1"].next_due)
    master.dispatcher.last_outcomes["s2"] = ("ok", 49.0)
    master.controls.paused["s0"] = hold("s0", "later")
    master.controls.crashes.crashed("s1", 50.0, "boom")
    rows = {s["name"]: s for s in status.render(cap)["scripts"]}
    assert [rows[n]["next_due_in"] for n in ("s0", "s1", "s2")] == [50.0, 50.0, 50.0]
    assert rows["s2"]["last_outcome"] is None and not rows["s0"]["paused"]
    assert rows["s1"]["crashes"] == 0 and not rows["s1"]["running"]
    assert rows["s0"]["contention"] is None
    assert rows["s2"]["contention"] == {"refused": 1, "held_elsewhere": 1, "holder": "other",
                                        "holder_ago": 10.0, "last_ago": 10.0}


class GatedWriter(status.StatusWriter):
    """Holds its first write until ``gate`` is set; records writes and their overlap."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[float] = []
        self.active = 0
        self.most_active = 0

    def _write(self, cap: status.Capture) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.entered.set()
        assert self.gate.wait(WAIT)
        self.seen.append(cap.now)
        super()._write(cap)
        self.active -= 1


def test_one_write_at_a_time_and_the_newest_capture_wins(tmp_path: Path) -> None:
    master = fake_master()
    writer = GatedWriter(tmp_path / "status-srv.json")
    writer.submit(status.capture(master, 1.0))
    assert writer.entered.wait(WAIT)  # the first write has started and is held
    for now in (2.0, 3.0, 4.0):
        writer.submit(status.capture(master, now))
    writer.gate.set()
    writer.close(WAIT)
    assert writer.seen == [1.0, 4.0] and writer.most_active == 1 and writer.writes == 2
    assert scripts_of(writer.path)["s0"]["next_due_in"] == 96.0


def test_a_stop_writes_the_last_state(tmp_path: Path) -> None:
    master = fake_master()
    path = tmp_path / "status-srv.json"
    sf = status.StatusFile(path)
    sf.tick(master, 1.0)
    master.pool.stopping = True
    scripts = master.dispatcher.scripts
    scripts.started(scripts["s0"], 3, 1.5, scripts["s0"].next_due)
    assert sf.tick(master, 1.5) == sf.next_write  # changed, but too soon: not written yet
    sf.close(master, 1.5)
    data = status.read_status(path)
    assert data is not None and data["stopping"] is True
    assert scripts_of(path)["s0"]["running"] is True


def test_a_hung_write_does_not_hold_the_stop(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    writer = GatedWriter(tmp_path / "status-srv.json")
    writer.submit(status.capture(fake_master(), 1.0))
    assert writer.entered.wait(WAIT)
    with caplog.at_level(logging.WARNING, logger="panda.master"):
        writer.close(0.05)  # returns although the write is held
    assert "was not written within" in caplog.text and writer.writes == 0
    writer.gate.set()


def test_a_failed_write_is_logged_once(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be", encoding="utf-8")
    writer = status.StatusWriter(blocker / "status-srv.json")
    cap = status.capture(fake_master(), 1.0)
    with caplog.at_level(logging.WARNING, logger="panda.master"):
        writer._write(cap)  # the thread's step, called here to see each attempt
        writer._write(cap)
        assert caplog.text.count("cannot write the status file") == 1
        blocker.unlink()
        writer._write(cap)  # mkdir made the directory: written
        (blocker / "status-srv.json").unlink()
        blocker.rmdir()
        blocker.write_text("again", encoding="utf-8")
        writer._write(cap)
    assert caplog.text.count("cannot write the status file") == 2 and writer.writes == 1

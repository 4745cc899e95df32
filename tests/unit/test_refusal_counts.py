"""Refused lease attempts counted by the master (never written to the history), and how
``panda-daemon status`` shows them."""

from __future__ import annotations

import pytest
from fakemaster import Rig

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet.leasemanager import LeaseDecision
from pandaserver.service.hoststatus import render_local_status


def test_refusals_are_counted_with_the_holder_and_write_no_history(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig([DaemonSpec(name="shared", module="record", period=10, timeout=30, sync=True)])
    m = rig.master.dispatcher
    state = m.scripts["shared"]
    caplog.set_level("INFO", logger="panda.master")
    for now, holder in ((100.0, "a"), (110.0, "a"), (120.0, None), (130.0, "b")):
        m.refusals.note(state, LeaseDecision(granted=False, wait=5.0, holder=holder), now)
    m.refusals.note(state, LeaseDecision(granted=False, wait=2.0, unavailable=True), 140.0)
    assert rig.history.records == [] and rig.history.started == []  # no history row
    assert m.refusals.contention.total == 4  # the outage is no refusal
    assert m.refusals.contention.report("shared", 150.0) == {
        "refused": 4, "held_elsewhere": 3, "holder": "b", "holder_ago": 20.0, "last_ago": 20.0}
    assert m.refusals.contention.report("other", 150.0) is None
    # a line when the holder changes, not one per refusal
    held = [r.getMessage() for r in caplog.records if "lease held by" in r.getMessage()]
    assert [line.split(";")[0] for line in held] == ["shared: lease held by a",
                                                     "shared: lease held by b"]


STATUS = {"server": "srv-b", "pid": 7, "written_at": 1000.0, "started_ago": 60.0,
          "n_proc": 1, "workers": [],
          "scripts": [{"name": "shared", "period": 10, "sync": True, "next_due_in": 4.0,
                       "contention": {"refused": 12, "held_elsewhere": 5, "holder": "srv-a",
                                      "holder_ago": 3.0, "last_ago": 1.0}},
                      {"name": "alone", "period": 10, "sync": True, "next_due_in": 4.0,
                       "contention": None},
                      {"name": "local", "period": 10, "sync": False, "next_due_in": 4.0}]}


def test_status_text_lists_the_refused_scripts_aged_by_the_time_since_the_write() -> None:
    text = render_local_status(STATUS, now=1010.0)
    _, table = text.split("sync leases refused here since the start")
    rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
    assert rows == [["SCRIPT", "REFUSED", "HELD", "ELSEWHERE", "LAST", "HOLDER", "LATEST",
                     "REFUSAL"], ["shared", "12", "5", "srv-a", "13.0s", "ago", "11.0s", "ago"]]
    quiet = {**STATUS, "scripts": STATUS["scripts"][1:]}  # type: ignore[index]
    assert "refused" not in render_local_status(quiet, now=1010.0)

"""Cron scripts in a real ``Master`` driven in-process (``fakemaster.py``): due at their
wall-clock firings, never early, a missed firing run once late and the rest skipped, a
clock step moving the firings without running one twice, and a sync script asking its
lease for a firing, judged by the database's clock."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakemaster import Rig, spec

from pandaserver.config.cronspec import parse
from pandaserver.config.daemon import DaemonSettings
from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.fleet.leasemanager import LeaseDecision, LocalLeases
from pandaserver.daemons.master.loop import Master
from pandaserver.db.stores import operator_commands as dbcontrol

EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # FakeClock's wall at monotonic 0


def cron(name: str, expression: str = "* * * * *", sync: bool = False) -> DaemonSpec:
    schedule = parse(expression)
    return dataclasses.replace(spec(name, period=schedule.shortest_interval, sync=sync),
                               cron=schedule)


def test_a_cron_script_runs_at_its_firings_never_before_and_not_at_start_up() -> None:
    rig = Rig([cron("c")], n_proc=1)
    rig.start_workers()
    assert rig.busy() == {}  # a period runs at start-up; a cron script waits for a firing
    assert rig.at(1019.9) == 1020.0  # asleep until the firing (wall 00:17:00)
    assert rig.busy() == {}
    rig.at(1020.0)
    assert rig.busy() == {1: "c"}
    state = rig.master.dispatcher.scripts["c"]
    assert (state.firing, state.next_due) == (EPOCH + 1080, 1080.0)
    rig.done(1)
    assert rig.at(1079.0) == 1080.0 and rig.busy() == {}


def test_a_missed_firing_runs_once_late_and_the_ones_beyond_it_are_skipped() -> None:
    rig = Rig([cron("c"), spec("long", period=3600)], n_proc=1)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "long"}  # the only worker, until 1150: c misses 1020 and 1080
    rig.at(1150.0)
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "c"}  # once, late
    run = rig.history.started[-1]
    assert (run.script, run.due, run.dispatched) == ("c", 1020.0, 1150.0)
    rig.done(1)
    rig.turn()
    assert rig.busy() == {}, "a missed firing ran in a burst"
    assert rig.master.dispatcher.scripts["c"].next_due == 1200.0  # the grid of firings again
    rig.at(1200.0)
    assert rig.busy() == {1: "c"}


def test_a_clock_stepped_back_over_a_firing_never_runs_it_twice() -> None:
    rig = Rig([cron("c")], n_proc=1)
    rig.start_workers()
    rig.at(1020.0)
    rig.done(1)
    rig.clock.step = -50.0  # NTP steps the wall clock back 50 s: 00:17:00 comes again
    rig.at(1030.0)
    state = rig.master.dispatcher.scripts["c"]
    assert state.next_due == 1130.0  # 00:18:00 moved with the clock
    for t in (1070.0, 1071.0, 1129.0):  # the wall reads 00:17:00 again at 1070: not run
        rig.at(t)
        assert rig.busy() == {}, f"ran again at {t}"
    rig.at(1130.0)
    assert rig.busy() == {1: "c"} and len(rig.history.started) == 2


def test_a_clock_stepped_forward_runs_the_passed_firing_once() -> None:
    rig = Rig([cron("c")], n_proc=1)
    rig.start_workers()
    rig.clock.step = 3600.0  # an hour forward, over sixty firings
    rig.at(1001.0)
    assert rig.busy() == {1: "c"}
    rig.done(1)
    rig.turn()
    assert rig.busy() == {}
    state = rig.master.dispatcher.scripts["c"]
    assert state.firing == EPOCH + 4620 and state.next_due == 1020.0


def test_a_sync_cron_script_asks_for_the_latest_firing_and_the_database_judges() -> None:
    rig = Rig([cron("s", sync=True)], n_proc=1)
    rig.start_workers()
    rig.turn()
    # at start-up it asks for the latest firing (00:16:00): the fleet may have missed it
    assert rig.leases.firings == [EPOCH + 960]
    _, sent, reply = rig.leases.asked.pop(0)
    # served already (the row was made at 00:16:40): it waits for 00:17:00
    reply(LeaseDecision(granted=False, wait=0.0, sent=sent, db_now=EPOCH + 1000,
                        served=EPOCH + 1000))
    state = rig.master.dispatcher.scripts["s"]
    assert (state.firing, state.next_due) == (EPOCH + 1020, 1020.0)
    rig.at(1020.0)
    assert rig.leases.firings[-1] == EPOCH + 1020
    # the database's clock is 30 s behind this server's: not yet, it says, for 30 s
    _, sent, reply = rig.leases.asked.pop(0)
    reply(LeaseDecision(granted=False, wait=30.0, sent=sent, db_now=EPOCH + 990,
                        served=EPOCH + 1000))
    assert (state.firing, state.next_due) == (EPOCH + 1020, 1050.0)
    rig.at(1050.0)
    generation = rig.leases.grant()
    assert rig.busy() == {1: "s"} and generation == 1
    # the next firing, 00:18:00, by the database's clock: 30 s after this server's
    assert (state.firing, state.next_due) == (EPOCH + 1080, 1110.0)
    rig.done(1)
    rig.at(1080.0)
    assert len(rig.leases.asked) == 0  # not before the database's 00:18:00
    rig.at(1110.0)
    assert rig.leases.firings[-1] == EPOCH + 1080


def test_without_a_fleet_a_sync_cron_script_waits_for_its_next_firing() -> None:
    # no shared database remembers what was served: a restart must not run the latest
    # firing again, so it waits for the next one like any cron script
    rig = Rig([cron("s", expression="0 2 * * *", sync=True)], n_proc=1)
    local = Master(rig.settings, server="here", clock=rig.clock, recorder=rig.history,
                   leases=LocalLeases(), processes=rig.processes,
                   containment=rig.containment, control=rig.link)
    local.begin(rig.clock.now)
    alone = local.dispatcher.scripts["s"]
    in_fleet = rig.master.dispatcher.scripts["s"]
    assert alone.firing == EPOCH + 2 * 3600  # 2026-01-01 02:00, the next
    assert in_fleet.firing == EPOCH - 22 * 3600  # 2025-12-31 02:00, the latest: asked for


def test_a_firing_missed_while_no_master_ran_runs_once_late(tmp_path: Path) -> None:
    # the previous master here waited for 00:10 (its status file says so), and stopped;
    # this one starts at 00:16:40: 00:10 to 00:16 were missed, so the latest runs once now
    rig = Rig([cron("c"), cron("d"), cron("e", expression="*/5 * * * *")], n_proc=1)
    status = tmp_path / "status-here.json"
    status.write_text(json.dumps({"scripts": [
        {"name": "c", "cron": "* * * * *", "timezone": "UTC", "next_firing": EPOCH + 600},
        {"name": "d", "cron": "* * * * *", "timezone": "UTC", "next_firing": EPOCH + 1020},
        # another schedule then: nothing is owed under this one
        {"name": "e", "cron": "0 * * * *", "timezone": "UTC", "next_firing": EPOCH + 600}]}))
    master = Master(rig.settings, server="here", clock=rig.clock, recorder=rig.history,
                    leases=rig.leases, processes=rig.processes, containment=rig.containment,
                    control=rig.link, status_file=status)
    master.begin(rig.clock.now)
    scripts = master.dispatcher.scripts
    assert (scripts["c"].firing, scripts["c"].next_due) == (EPOCH + 960, 960.0)  # due now
    assert scripts["d"].firing == EPOCH + 1020  # nothing missed: the next one
    assert scripts["e"].firing == EPOCH + 1200
    rig.master = master
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "c"}
    rig.done(1)
    rig.turn()
    assert rig.busy() == {} and scripts["c"].firing == EPOCH + 1020  # once, no burst


def _master_on(rig: Rig, status: Path) -> Master:
    """A master on ``rig``'s fakes that keeps its status file (and firing notes) at ``status``."""
    master = Master(rig.settings, server="here", clock=rig.clock, recorder=rig.history,
                    leases=rig.leases, processes=rig.processes, containment=rig.containment,
                    control=rig.link, status_file=status)
    master.begin(rig.clock.now)
    rig.master = master
    return master


def test_a_firing_dispatched_just_before_a_kill_is_not_run_again_by_the_next_master(
        tmp_path: Path) -> None:
    # a master dispatches c's 00:17 firing and is killed before its status file's thread
    # wrote that c now waits for 00:18: the file still says 00:17; the next master here
    # must not take 00:17 as missed while no master ran
    status = tmp_path / "status-here.json"
    first = Rig([cron("c")], n_proc=1)
    killed = _master_on(first, status)
    first.start_workers()
    first.at(1020.0)
    assert first.busy() == {1: "c"}
    assert killed.status is not None
    killed.status.writer.close(5.0)  # nothing more from it: what it wrote is all there is
    status.write_text(json.dumps({"scripts": [
        {"name": "c", "cron": "* * * * *", "timezone": "UTC", "next_firing": EPOCH + 1020}]}))
    second = Rig([cron("c")], n_proc=1)
    second.clock.now = 1030.0
    scripts = _master_on(second, status).dispatcher.scripts
    assert scripts["c"].firing == EPOCH + 1080, "the dispatched firing was run again"
    second.start_workers()
    second.turn()
    assert second.busy() == {}


def test_a_reload_moves_a_script_between_a_period_and_a_cron_schedule() -> None:
    rig = Rig([spec("p", period=3600), cron("c", expression="*/5 * * * *")], n_proc=1)
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "p"}  # the period runs at start-up; c waits for 00:20
    rig.done(1)
    scripts = rig.master.dispatcher.scripts
    new = DaemonSettings(path="x.cfg", n_proc=1, scripts={s.name: s for s in [
        cron("p", expression="30 * * * *"), spec("c", period=600)]})
    rig.at(1010.0)
    rig.master.apply_settings(new, rig.clock.now)
    # p now waits for 00:30 (not its period's due time); c is a period script again
    assert (scripts["p"].firing, scripts["p"].next_due) == (EPOCH + 1800, 1800.0)
    # c keeps its place in time (00:20, before the reload + 600 s), as a period script
    assert scripts["c"].firing is None and scripts["c"].spec.cron is None
    assert scripts["c"].next_due == 1200.0
    rig.at(1200.0)
    assert rig.busy() == {1: "c"}
    rig.done(1)
    assert scripts["c"].next_due == 1800.0  # its grid: anchored on this first run
    rig.at(1799.0)
    assert rig.busy() == {}
    rig.at(1800.0)
    assert rig.busy() == {1: "c"}  # by name: c before p, both due at 1800
    rig.done(1)
    rig.turn()
    assert rig.busy() == {1: "p"}


def test_run_now_of_a_sync_cron_script_serves_no_firing() -> None:
    rig = Rig([cron("s", sync=True)], n_proc=1)
    rig.start_workers()
    rig.turn()
    _, sent, reply = rig.leases.asked.pop(0)  # the latest firing, 00:16: served already
    rig.leases.firings.clear()
    reply(LeaseDecision(granted=False, sent=sent, db_now=EPOCH + 1000, served=EPOCH + 1000))
    rig.turn()
    rig.link.answer((), [rig.link.command(dbcontrol.RUN_NOW, "s")])
    [(_, lease, done)] = rig.link.claims
    assert lease == "s"  # the claim makes the lease due (db/stores/operator_commands.py)
    done("here", None, False)
    rig.at(1005.0)
    assert rig.leases.firings == [None]  # asked for no firing
    rig.leases.grant()
    assert rig.busy() == {1: "s"}
    state = rig.master.dispatcher.scripts["s"]
    assert (state.firing, state.next_due) == (EPOCH + 1020, 1020.0)  # 00:17 still runs
    rig.done(1)
    rig.at(1020.0)
    assert rig.leases.firings == [None, EPOCH + 1020]


def test_the_late_warning_names_the_firing_in_its_zone_and_in_utc(
        caplog: pytest.LogCaptureFixture) -> None:
    zurich = dataclasses.replace(cron("c"), cron=parse("* * * * *", "Europe/Zurich"))
    rig = Rig([zurich, spec("long", period=3600)], n_proc=1)
    master = Master(rig.settings, server="here", clock=rig.clock, recorder=rig.history,
                    leases=rig.leases, processes=rig.processes, containment=rig.containment,
                    control=rig.link, late_floor=10.0)
    master.begin(rig.clock.now)
    rig.master = master
    rig.start_workers()
    rig.turn()
    assert rig.busy() == {1: "long"}  # c's 00:17 firing waits for the only worker
    caplog.set_level(logging.WARNING, logger="panda.master")
    caplog.clear()  # what start-up logged, at whatever level earlier tests left the logger
    rig.at(1051.0)  # late by more than max(10 s, 60 s / 2)
    assert [r.getMessage() for r in caplog.records] == [
        "c is 31 s late (due at its firing of 2026-01-01 01:17:00 CET (00:17:00 UTC)):"
        " all 1 workers are busy"]

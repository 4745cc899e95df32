"""How a cron script is shown and judged by the views: its schedule beside periods, its
next firing (in its zone and in UTC), late past the threshold, stale after k firings (not
k periods), the local status text and the /metrics gauge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pandaserver.config.cronspec import parse
from pandaserver.config.scripts import DaemonSpec
from pandaserver.db.stores.runrecords import RunRow
from pandaserver.service.hoststatus import render_local_status
from pandaserver.web.model import (
    ScriptFacts,
    ScriptView,
    ServerView,
    next_due_label,
    schedule_label,
    script_views,
)

NOW = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)  # a Monday, summer time in Zurich


def nightly(zone: str = "Europe/Zurich") -> DaemonSpec:
    cron = parse("0 2 * * *", zone)
    return DaemonSpec(name="nightly", module="nightly", period=cron.shortest_interval,
                      timeout=3600, cron=cron)


def server() -> ServerView:
    return ServerView(server="a", pid=1, version="x", started_at=NOW - timedelta(days=9),
                      last_seen=NOW, heartbeat_age=0.5, alive=True, config_hash="h",
                      config_mismatch=False, clock_offset=0.0)


def run(started: datetime) -> RunRow:
    return RunRow(id=1, script="nightly", server="a", pid=2, generation=None, due_at=started,
                  started_at=started, ended_at=started + timedelta(seconds=5), outcome="ok",
                  error=None)


def view(started: datetime, success: datetime | None, now: datetime = NOW,
         factor: float = 3) -> ScriptView:
    [found] = script_views({"nightly": nightly()}, [run(started)],
                           {"nightly": ScriptFacts(first_seen=started, last_success=success)},
                           [], [server()], now, factor)
    return found


def test_next_due_is_the_next_firing_after_the_last_start_shown_in_its_zone_and_utc() -> None:
    started = datetime(2026, 3, 30, 0, 0, 3, tzinfo=UTC)  # 02:00:03 in Zurich (CEST)
    found = view(started, started)
    assert found.next_due == datetime(2026, 3, 31, 0, 0, tzinfo=UTC)  # not started + 24 h
    assert not found.late and not found.stale
    assert schedule_label(found) == "cron 0 2 * * * (Europe/Zurich)"
    assert next_due_label(found) == "2026-03-31 02:00:00 CEST (00:00:00 UTC)"
    assert found.cron == "0 2 * * *" and found.timezone == "Europe/Zurich"  # in the JSON API


def test_late_past_the_threshold_and_stale_after_k_firings_not_k_periods() -> None:
    started = datetime(2026, 3, 27, 1, 0, 3, tzinfo=UTC)  # Friday 02:00:03 CET
    # the next firings: Saturday 02:00 CET; none on Sunday (02:00 does not exist: clocks
    # jump to 03:00), then Monday and Tuesday 02:00 CEST
    late = view(started, started, now=datetime(2026, 3, 28, 14, 0, tzinfo=UTC))
    assert late.late and not late.stale  # 13 h past one firing: late (threshold 12 h)
    # 3 firings after Friday's success: Sat 01:00, Mon 00:00 and Tue 00:00 UTC (3 x 24 h
    # after it would be Monday 01:00 UTC: stale a day early)
    before = view(started, started, now=datetime(2026, 3, 30, 23, 59, tzinfo=UTC))
    after = view(started, started, now=datetime(2026, 3, 31, 0, 1, tzinfo=UTC))
    assert not before.stale and after.stale
    assert after.stale_after == (datetime(2026, 3, 31, 0, 0, tzinfo=UTC)
                                 - started).total_seconds()


def test_the_local_status_text_shows_the_schedule_and_next_firing() -> None:
    firing = datetime(2026, 3, 31, 0, 0, tzinfo=UTC).timestamp()
    status = {"server": "a", "pid": 1, "written_at": firing - 60, "started_ago": 5.0,
              "n_proc": 1, "workers": [],
              "scripts": [{"name": "nightly", "period": 86400, "sync": True, "running": False,
                           "next_due_in": 60.0, "cron": "0 2 * * *",
                           "timezone": "Europe/Zurich", "next_firing": firing}]}
    text = render_local_status(status, now=firing - 60)
    assert "cron 0 2 * * * (Europe/Zurich), next 2026-03-31 02:00:00 CEST (00:00:00 UTC)" in text


def test_metrics_show_the_next_firing_time() -> None:
    from pandaserver.web.fleetview import Overview
    from pandaserver.web.metrics import _fleet_metrics

    started = datetime(2026, 3, 30, 0, 0, 3, tzinfo=UTC)
    ov = Overview(db_now=NOW, stale_factor=3.0, servers=[server()],
                  scripts=[view(started, started)], leases=[])
    [family] = [f for f in _fleet_metrics(ov)
                if f.name == "panda_daemon_script_next_firing_timestamp_seconds"]
    [sample] = family.samples
    assert sample.labels == {"script": "nightly", "cron": "0 2 * * *",
                             "timezone": "Europe/Zurich"}
    assert sample.value == datetime(2026, 3, 31, 0, 0, tzinfo=UTC).timestamp()


def test_fleet_check_counts_a_cron_script_stale_in_firings() -> None:
    from pandaserver.commands.web import check_text
    from pandaserver.exitcodes import CHECK_CRITICAL
    from pandaserver.web.fleetview import Overview

    started = datetime(2026, 3, 27, 1, 0, 3, tzinfo=UTC)
    stale = view(started, started, now=datetime(2026, 3, 31, 0, 1, tzinfo=UTC))
    ov = Overview(db_now=datetime(2026, 3, 31, 0, 1, tzinfo=UTC), stale_factor=3.0,
                  servers=[server()], scripts=[stale], leases=[])
    code, text = check_text(ov)
    assert code == CHECK_CRITICAL and text.startswith("CRITICAL: 1 stale")
    assert "stale: nightly (no successful run anywhere for 4.0d, limit 3 firings of cron" \
           " 0 2 * * * (Europe/Zurich))" in text

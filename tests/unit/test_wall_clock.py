"""Where the wall clock matters, freezegun sets it: a crontab converts the same whatever
today's date, and the status text ages its figures by the time since the file was written."""

from __future__ import annotations

import argparse
import io

import pytest
from freezegun import freeze_time

from pandaserver.commands.cron import add_arguments, convert_streams
from pandaserver.cron.firings import analyse_schedule
from pandaserver.service.hoststatus import render_local_status

CRONTAB = """\
0-59/4 * * * * atlpan /opt/panda/usr/bin/panda_server-add > /dev/null 2>&1
5 1-19/6 * * * atlpan /opt/panda/usr/bin/panda_server-copyArchive > /dev/null 2>&1
30 2 * * 0 atlpan /opt/panda/usr/bin/panda_server-weekly > /dev/null 2>&1
0 3 29 2 * atlpan /opt/panda/usr/bin/panda_server-leapday > /dev/null 2>&1
15 4 31 * * atlpan /opt/panda/usr/bin/panda_server-monthend > /dev/null 2>&1
0 0 1 1,7 * atlpan /opt/panda/usr/bin/panda_server-halfyear > /dev/null 2>&1
"""


def convert_crontab() -> tuple[int, str, str]:
    analyse_schedule.cache_clear()  # computed afresh under each date
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    # five servers: the leap-day line's period (4 years / 5) stays within the daemon's bound
    status = convert_streams(parser.parse_args(["--servers", "5"]), io.StringIO(CRONTAB), out,
                             err)
    return status, out.getvalue(), err.getvalue()


# a leap day; the last second of a century; past 2038; and a day whose next 28 years hold
# 2100, which is no leap year (a cycle counted from today would see one leap day fewer)
@pytest.mark.parametrize("today", ["2024-02-29 23:59:59", "1999-12-31 23:59:59",
                                   "2038-01-19 03:14:08", "2090-06-01 12:00:00"])
def test_cron_conversion_never_depends_on_todays_date(today: str) -> None:
    expected = convert_crontab()
    assert expected[0] == 0 and '"leapday"' in expected[1], expected
    with freeze_time(today):
        assert convert_crontab() == expected


STATUS = {  # as the master wrote it: figures are seconds from ``written_at`` (wall clock)
    "server": "srv-a", "pid": 4242, "written_at": 1_709_251_170.0,  # 2024-02-29 23:59:30 UTC
    "started_ago": 10.0, "stopping": False, "n_proc": 1,
    "workers": [{"index": 1, "pid": 4243, "state": "busy", "age": 8.0, "script": "slow",
                 "run": 3, "running_for": 2.0}],
    "scripts": [
        {"name": "slow", "period": 60, "sync": False, "running": True, "next_due_in": None,
         "last_outcome": "ok", "last_ended_ago": 50.0},
        {"name": "soon", "period": 120, "sync": True, "running": False, "next_due_in": 90.0,
         "last_outcome": None, "last_ended_ago": None},
        {"name": "due", "period": 30, "sync": False, "running": False, "next_due_in": 20.0,
         "last_outcome": "failed", "last_ended_ago": 10.0},
    ],
}


def row(text: str, first: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.split()[:1] == [first])
    return [cell for cell in line.strip().split("  ") if cell.strip()]


def test_status_text_ages_the_figures_by_the_time_since_the_write() -> None:
    with freeze_time("2024-02-29 23:59:30", tz_offset=0) as frozen:
        fresh = render_local_status(STATUS)
        assert "master srv-a pid 4242, up 10.0s (status written 0ms ago)" in fresh
        assert [c.strip() for c in row(fresh, "soon")] == ["soon", "2m", "yes", "in 90.0s",
                                                           "-"]
        frozen.tick(30)
        aged = render_local_status(STATUS)
    assert "master srv-a pid 4242, up 40.0s (status written 30.0s ago)" in aged
    assert [c.strip() for c in row(aged, "1")][2:5] == ["busy", "slow run 3", "32.0s"]
    assert [c.strip() for c in row(aged, "slow")][3:] == ["running now", "ok 80.0s ago"]
    assert [c.strip() for c in row(aged, "soon")][3] == "in 60.0s"
    assert [c.strip() for c in row(aged, "due")][3:] == ["now", "failed 40.0s ago"]

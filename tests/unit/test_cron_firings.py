"""The pure firing computation of a ``cron`` schedule, with fixed datetimes: daylight-saving
gaps and overlaps, leap days, shortcuts, month ends, a clock stepped back; and the
``cron``/``timezone`` keys of a script as the configuration reads them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pandaserver.config import load_config
from pandaserver.config.cronspec import CronError, parse


def at(text: str, zone: str = "UTC") -> float:
    """A local wall time in ``zone`` as POSIX seconds (fold 0: the first occurrence)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def local(t: float, zone: str) -> str:
    return datetime.fromtimestamp(t, tz=UTC).astimezone(ZoneInfo(zone)).strftime(
        "%Y-%m-%d %H:%M %Z")


def firings(expression: str, zone: str, start: float, count: int) -> list[float]:
    schedule = parse(expression, zone)
    found, t = [], start
    for _ in range(count):
        t = schedule.next_after(t)
        found.append(t)
    return found


@pytest.mark.parametrize(("zone", "before", "day", "after"), [
    # 2024: Zurich jumps from 02:00 to 03:00 on March 31, Chicago on March 10
    ("Europe/Zurich", "2024-03-30", "2024-03-31", "2024-04-01"),
    ("America/Chicago", "2024-03-09", "2024-03-10", "2024-03-11"),
])
def test_spring_forward_skips_the_missing_firing(zone: str, before: str, day: str,
                                                 after: str) -> None:
    found = [local(t, zone) for t in firings("30 2 * * *", zone, at(f"{before} 00:00", zone), 2)]
    # the day before fires at 02:30; the day itself has no 02:30 and is skipped, not moved
    assert found[0].startswith(f"{before} 02:30") and found[1].startswith(f"{after} 02:30")
    # an hourly schedule fires 01:00 then 03:00 that night: 02:00 does not exist
    hourly = [local(t, zone)[11:16] for t in firings("0 * * * *", zone, at(f"{day} 00:30", zone), 3)]
    assert hourly == ["01:00", "03:00", "04:00"]


@pytest.mark.parametrize(("zone", "day"), [("Europe/Zurich", "2024-10-27"),
                                           ("America/Chicago", "2024-11-03")])
def test_fall_back_runs_the_repeated_time_once(zone: str, day: str) -> None:
    # 01:30 (Chicago) / 02:30 (Zurich) happens twice that night: it fires once, the first time
    hour = {"Europe/Zurich": 2, "America/Chicago": 1}[zone]
    start = at(f"{day} 00:00", zone)
    found = firings(f"30 {hour} * * *", zone, start, 2)
    assert found[1] - found[0] == 86400 + 3600  # the next day's, not the repeat's
    # every-15-minutes: the repeated hour fires nothing, and no instant fires twice
    quarter = firings("*/15 * * * *", zone, at(f"{day} {hour:02d}:00", zone) - 1, 6)
    shown = [local(t, zone)[11:16] for t in quarter]
    assert shown == [f"{hour:02d}:00", f"{hour:02d}:15", f"{hour:02d}:30", f"{hour:02d}:45",
                     f"{hour + 1:02d}:00", f"{hour + 1:02d}:15"]
    assert quarter[4] - quarter[3] == 15 * 60 + 3600  # the repeated hour is skipped
    # a clock inside the repeated hour (its second pass) sees no firing of the first again
    for minutes in (5, 46):  # hh:05 and hh:46 the second time
        second_pass = quarter[0] + 3600 + minutes * 60
        assert parse("*/15 * * * *", zone).next_after(second_pass) == quarter[4]


def test_feb_29_and_yearly_and_month_ends() -> None:
    leap = firings("0 3 29 2 *", "UTC", at("2024-03-01 00:00"), 2)
    assert [utc(t) for t in leap] == ["2028-02-29 03:00", "2032-02-29 03:00"]
    assert [utc(t) for t in firings("0 3 29 2 *", "UTC", at("2096-03-01"), 1)] == [
        "2104-02-29 03:00"]  # 2100 is no leap year
    assert [utc(t) for t in firings("@yearly", "UTC", at("2024-06-01"), 2)] == [
        "2025-01-01 00:00", "2026-01-01 00:00"]
    assert [utc(t) for t in firings("0 0 L * *", "UTC", at("2024-01-15"), 3)] == [
        "2024-01-31 00:00", "2024-02-29 00:00", "2024-03-31 00:00"]
    assert [utc(t) for t in firings("15 4 31 * *", "UTC", at("2024-01-31 05:00"), 2)] == [
        "2024-03-31 04:15", "2024-05-31 04:15"]  # months without a 31st do not fire
    assert parse("@yearly").shortest_interval == 365 * 86400
    assert parse("0 9,17 * * *").shortest_interval == 8 * 3600
    assert parse("5 1-19/6 * * *").shortest_interval == 6 * 3600


def test_latest_at_includes_the_instant_and_next_after_excludes_it() -> None:
    s = parse("5 1-19/6 * * *", "UTC")
    assert [utc(t) for t in firings("5 1-19/6 * * *", "UTC", at("2024-05-01 00:00"), 5)] == [
        "2024-05-01 01:05", "2024-05-01 07:05", "2024-05-01 13:05", "2024-05-01 19:05",
        "2024-05-02 01:05"]
    firing = at("2024-05-01 13:05")
    assert s.latest_at(firing) == firing
    assert s.latest_at(firing - 0.001) == at("2024-05-01 07:05")
    assert s.next_after(firing) == at("2024-05-01 19:05")
    assert s.next_after(firing - 0.001) == firing
    assert parse("0 0 29 2 *").latest_at(at("2024-02-28")) == at("2020-02-29")


def test_a_clock_stepped_back_over_a_firing_never_runs_it_twice() -> None:
    # the master asks for the firing after the one it ran, wherever the clock went since
    s = parse("* * * * *")
    ran = at("2026-12-06 12:00")
    stepped_back_to = ran - 150  # NTP steps the clock 2.5 minutes back after the run
    following = s.next_after(ran)
    assert following == ran + 60  # what the master waits for; not latest_at(stepped_back_to)
    assert s.latest_at(stepped_back_to) < ran  # firings it already served, never asked again
    # stepped forward over three firings: one is due (run late, once), then the grid resumes
    stepped_forward_to = ran + 200
    assert s.latest_at(stepped_forward_to) == ran + 180
    assert s.next_after(s.latest_at(stepped_forward_to) or 0) == ran + 240


@pytest.mark.parametrize(("expression", "zone", "fragment"), [
    ("0 2 * *", "UTC", "must have five fields"),
    ("0 0 2 * * *", "UTC", "must have five fields"),
    ("61 * * * *", "UTC", "is not a valid cron expression"),
    ("@reboot", "UTC", "unknown shortcut '@reboot'"),
    ("0 0 30 2 *", "UTC", "never fires"),
    ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_schedules_are_refused_by_name(expression: str, zone: str, fragment: str) -> None:
    with pytest.raises(CronError, match=fragment):
        parse(expression, zone)


def write(tmp_path: Path, config: str) -> Path:
    path = tmp_path / "panda_server.cfg"
    path.write_text("[daemon]\nenable = True\npackage = testscripts\nconfig = " + config + "\n",
                    encoding="utf-8")
    return path


def test_config_reads_cron_and_timezone(tmp_path: Path) -> None:
    settings = load_config(str(write(tmp_path, '{"n": {"cron": "0 9,17 * * *",'
                                                ' "timezone": "Europe/Zurich"},'
                                                ' "p": {"period": 60}}'))).daemon
    assert not settings.problems
    n, p = settings.scripts["n"], settings.scripts["p"]
    assert n.cron is not None and (n.cron.expression, n.cron.zone) == ("0 9,17 * * *",
                                                                       "Europe/Zurich")
    assert n.period == 8 * 3600 and n.timeout == 8 * 3600 + 3600  # from the shortest interval
    assert n.schedule_text == "cron 0 9,17 * * * (Europe/Zurich)"
    assert p.cron is None and "cron" not in p.as_dict()  # a period config reads as before
    assert n.as_dict()["cron"] == "0 9,17 * * *"


@pytest.mark.parametrize(("entry", "key", "fragment"), [
    ('{"cron": "0 2 * * *", "period": 60}', "cron", "and period are both set"),
    ('{"sync": true}', "period", "or cron (wall-clock times"),
    ('{"period": 60, "timezone": "UTC"}', "timezone", "applies to a cron schedule only"),
    ('{"cron": "0 2 * *"}', "cron", "must have five fields"),
    ('{"cron": 5}', "cron", "must be a cron expression (a string like"),
    ('{"cron": "0 2 * * *", "timezone": "Europe/Zurch"}', "timezone", "unknown time zone"),
])
def test_bad_cron_entries(tmp_path: Path, entry: str, key: str, fragment: str) -> None:
    path = write(tmp_path, '{"s": ' + entry + ', "good": {"period": 1}}')
    found = [str(p) for p in load_config(str(path)).daemon.problems]
    assert len(found) == 1, found
    assert found[0].startswith(f"{path} [daemon] config script 's' key '{key}': ")
    assert fragment in found[0]

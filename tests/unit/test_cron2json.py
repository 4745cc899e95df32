"""cron2json: reading crontab lines, periods, the sync rule and the printed config."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from pandaserver.commands.cron import add_arguments, convert_streams
from pandaserver.config import load_config
from pandaserver.cron.convert import (
    Options,
    convert,
    format_config,
    format_duration,
    format_section,
    period_value,
    read_module_map,
    sync_rule,
)
from pandaserver.cron.firings import analyse_schedule
from pandaserver.cron.parse import read_command, read_crontab
from pandaserver.exitcodes import RET_CONFIG, RET_FAILED, RET_OK

ADD = "0-59/4 * * * * atlpan /opt/panda/usr/bin/panda_server-add > /dev/null 2>&1"
COPY = "5 1-19/6 * * * atlpan /opt/panda/usr/bin/panda_server-copyArchive > /dev/null 2>&1"
PILOT = "0-59/5 * * * * atlpan /opt/panda/usr/bin/panda_server-pilot_streaming > /dev/null 2>&1"
HOUR, DAY = 3600, 86400


def cli(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    status = convert_streams(parser.parse_args(argv), io.StringIO(stdin), out, err)
    return status, out.getvalue(), err.getvalue()


def entry_lines(output: str) -> dict[str, str]:
    """Each script's entry as printed: name -> the JSON text of its settings."""
    entries = {}
    for line in output.splitlines()[1:-1]:
        name, _, text = line.strip().rstrip(",").partition(": ")
        entries[json.loads(name)] = text
    return entries


def converted(lines: list[str], options: Options | None = None) -> tuple[dict[str, str], list[str]]:
    jobs, notes = read_crontab(lines)
    result = convert(jobs, options or Options())
    rendered = [n.render("crontab") for n in [*notes, *result.diagnostics]]
    return {s.name: json.dumps(s.entry()) for s in result.scripts}, rendered


# -- the worked examples of the issue ----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "argv", "module_map", "name", "expected"),
    [
        (ADD, ["--no-sync", "add"], None, "add", '{"period": 240}'),
        (COPY, ["--servers", "9"], None, "copyArchive", '{"cron": "5 1-19/6 * * *", "sync": true}'),
        # --periods: the approximation of the guide before cron schedules, unchanged
        (ADD, ["--no-sync", "add", "--periods"], None, "add", '{"period": 240}'),
        (COPY, ["--servers", "9", "--periods"], None, "copyArchive",
         '{"period": 2400, "sync": true}'),
        (
            PILOT,
            ["--servers", "9", "--periods"],
            "pilot_streaming = pilotStreaming\n",
            "pilot_streaming",
            '{"module": "pilotStreaming", "period": 300}',
        ),
        (
            PILOT,
            ["--servers", "9"],
            "pilot_streaming = pilotStreaming\n",
            "pilot_streaming",
            '{"module": "pilotStreaming", "period": 300}',
        ),
    ],
)
def test_worked_examples(
    tmp_path: Path, line: str, argv: list[str], module_map: str | None, name: str, expected: str
) -> None:
    if module_map is not None:
        path = tmp_path / "modules.map"
        path.write_text(module_map)
        argv = [*argv, "--module-map", str(path)]
    status, out, err = cli(argv, line + "\n")
    assert (status, err) == (RET_OK, "")
    assert entry_lines(out) == {name: expected}


# -- cron entries for what a period cannot express ---------------------------------------------

NIGHTLY = "0 2 * * * atlpan /opt/panda/usr/bin/panda_server-nightly > /dev/null 2>&1"
TWICE = "0 9,17 * * * atlpan /opt/panda/usr/bin/panda_server-report > /dev/null 2>&1"


def test_times_of_day_stay_cron_entries_that_check_config_accepts_and_that_fire_then(
        tmp_path: Path) -> None:
    from datetime import UTC, datetime

    status, out, err = cli(["--servers", "9", "--section"], "\n".join([NIGHTLY, TWICE, COPY, ADD]))
    # no "irregular" warning and no server count correction for the cron entries
    assert (status, err) == (RET_OK, "")
    config = out.split("config = ", 1)[1]
    assert entry_lines(config) == {
        "nightly": '{"cron": "0 2 * * *", "sync": true}',
        "report": '{"cron": "0 9,17 * * *", "sync": true}',
        "copyArchive": '{"cron": "5 1-19/6 * * *", "sync": true}',
        "add": '{"period": 240}',  # a plain interval: a period, per server (240/9 < 60 s)
    }
    path = tmp_path / "panda_server.cfg"
    path.write_text(out.replace("package = pandaserver.daemons.scripts", "package = testscripts"))
    settings = load_config(str(path)).daemon
    assert not settings.problems, settings.problems
    start = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    for name, times in (("nightly", ["02:00", "02:00"]), ("report", ["09:00", "17:00"]),
                        ("copyArchive", ["01:05", "07:05"])):
        cron = settings.scripts[name].cron
        assert cron is not None
        first = cron.next_after(start)
        shown = [datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M")
                 for t in (first, cron.next_after(first))]
        assert shown == times, name


def test_periods_keeps_the_approximation_and_timezone_goes_into_cron_entries() -> None:
    status, out, err = cli(["--periods"], TWICE)
    assert status == RET_OK and entry_lines(out) == {"report": '{"period": 43200, "sync": true}'}
    assert "irregular schedule '0 9,17 * * *'" in err
    status, out, err = cli(["--timezone", "Europe/Zurich"], NIGHTLY)
    assert (status, err) == (RET_OK, "")
    assert entry_lines(out) == {
        "nightly": '{"cron": "0 2 * * *", "timezone": "Europe/Zurich", "sync": true}'}
    status, out, err = cli(["--timezone", "Europe/Zurch"], NIGHTLY)
    assert status == RET_CONFIG and out == "" and "--timezone: unknown time zone" in err


# -- periods from schedules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "period", "intervals"),
    [
        ("* * * * *", 60, (60,)),
        ("0-59/4 * * * *", 240, (240,)),
        ("5 1-19/6 * * *", 6 * HOUR, (6 * HOUR,)),  # wraps 19:05 -> 01:05: also 6h
        ("0 9,17 * * *", 12 * HOUR, (8 * HOUR, 16 * HOUR)),
        ("*/7 * * * *", 3600 / 9, (60 * 4, 60 * 7)),  # 0..56, then 56 -> 60: 4 minutes
        ("0 0 * * 1", 7 * DAY, (7 * DAY,)),
        ("30 2 * * 1,4", 3.5 * DAY, (3 * DAY, 4 * DAY)),
        ("0 0 1 1 *", 365.25 * DAY, (365 * DAY, 366 * DAY)),
        ("0 0 29 2 *", 4 * 365.25 * DAY, (1461 * DAY,)),
    ],
)
def test_schedule_period_and_intervals(fields: str, period: float, intervals: tuple[int]) -> None:
    schedule = analyse_schedule(fields)
    assert schedule.period == pytest.approx(period)
    assert schedule.intervals == intervals
    assert schedule.regular is (len(intervals) == 1)


def test_monthly_schedule_averages_the_month_lengths() -> None:
    schedule = analyse_schedule("0 0 1 * *")
    assert schedule.intervals == (28 * DAY, 29 * DAY, 30 * DAY, 31 * DAY)
    assert schedule.period == pytest.approx(365.25 / 12 * DAY)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ("61 * * * *", "invalid schedule"),
        ("*/0 * * * *", "invalid schedule"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 * *", "five fields"),
    ],
)
def test_bad_schedules_say_why(fields: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        analyse_schedule(fields)


# -- reading crontab lines ---------------------------------------------------------------


def test_comments_blanks_and_cron_variables_are_skipped_quietly() -> None:
    jobs, notes = read_crontab(["# header", "", "   ", "MAILTO=ops@example.org", 'SHELL="/bin/sh"'])
    assert (jobs, notes) == ([], [])


def test_other_variables_warn_that_they_are_not_carried_over() -> None:
    jobs, notes = read_crontab(["PANDA_HOME = /opt/panda", "* * * * * /bin/x"])
    assert [job.line for job in jobs] == [2]
    assert [(n.line, n.severity) for n in notes] == [(1, "warning")]
    assert "PANDA_HOME" in notes[0].message


def test_macros_are_expanded_and_reboot_is_an_error() -> None:
    jobs, notes = read_crontab(
        ["@hourly atlpan /bin/a", "@daily /bin/b", "@reboot /bin/c", "@often x"]
    )
    assert [(j.schedule, j.user, j.command, j.schedule_text) for j in jobs] == [
        ("0 * * * *", "atlpan", "/bin/a", "@hourly"),
        ("0 0 * * *", None, "/bin/b", "@daily"),
    ]
    assert [(n.line, n.severity) for n in notes] == [(3, "error"), (4, "error")]
    assert "no period" in notes[0].message
    assert "unknown macro '@often'" in notes[1].message


def test_a_line_without_a_command_is_an_error() -> None:
    _, notes = read_crontab(["*/5 * * * *"])
    assert notes[0].line == 1
    assert "five schedule fields and a command" in notes[0].message


@pytest.mark.parametrize(
    ("rest", "user", "command"),
    [
        (
            "atlpan /opt/panda/usr/bin/panda_server-add",
            "atlpan",
            "/opt/panda/usr/bin/panda_server-add",
        ),
        ("root python3 /x.py", "root", "python3 /x.py"),
        ("/opt/panda/usr/bin/panda_server-add", None, "/opt/panda/usr/bin/panda_server-add"),
        ("python /opt/tidy.py --days 3", None, "python /opt/tidy.py --days 3"),
        ("panda_server-add now", None, "panda_server-add now"),
        ("tidy.sh now", None, "tidy.sh now"),
        ("myscript --verbose", None, "myscript --verbose"),
    ],
)
def test_user_field_is_detected_line_by_line(rest: str, user: str | None, command: str) -> None:
    jobs, _ = read_crontab([f"0 * * * * {rest}"])
    assert (jobs[0].user, jobs[0].command) == (user, command)


def test_user_field_can_be_forced() -> None:
    line = ["0 * * * * tidy now"]
    assert read_crontab(line, "auto")[0][0].user == "tidy"
    assert read_crontab(line, "no")[0][0].command == "tidy now"
    assert read_crontab(["0 * * * * python /x.py"], "yes")[0][0].user == "python"


# -- reading commands -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "name", "arguments"),
    [
        ("/opt/panda/usr/bin/panda_server-copyArchive > /dev/null 2>&1", "copyArchive", ()),
        ("/opt/bin/panda_server-add.py -n 3 >>/dev/null 2>&1 </dev/null", "add", ("-n", "3")),
        ("python /opt/panda/tidy.py --days 3", "tidy", ("--days", "3")),
        ("/usr/bin/python3.11 -u -W ignore /opt/tidy.py x", "tidy", ("x",)),
        ("python3 -m pandaserver.daemons.scripts.tidy --fast", "tidy", ("--fast",)),
        ('bash /opt/bin/cleanup.sh \'two words\' "a \\"q\\""', "cleanup", ("two words", 'a "q"')),
        ("bash -lc '/opt/bin/panda_server-add a > /dev/null'", "add", ("a",)),
        ("/usr/bin/env python3 /opt/x.py", "x", ()),
        ("exec /opt/bin/job 2>&- &", "job", ()),
        ("/opt/bin/job '$HOME' \\$(x) \"\\`y\\`\"", "job", ("$HOME", "$(x)", "`y`")),
        ("/opt/bin/job arg # a comment", "job", ("arg",)),
        ("/opt/bin/job 50\\% 2>/dev/null", "job", ("50%",)),
    ],
)
def test_command_gives_script_name_and_arguments(
    command: str, name: str, arguments: tuple[str, ...]
) -> None:
    result = read_command(command)
    assert (result.name, result.arguments, result.warnings) == (name, arguments, ())


@pytest.mark.parametrize(
    ("command", "name", "warning"),
    [
        ("/opt/bin/add; /opt/bin/other", "add", "dropped: '; /opt/bin/other'"),
        ("/opt/bin/add 2>&1 | logger -t add", "add", "dropped: '| logger -t add'"),
        ("/opt/bin/add && touch /tmp/done", "add", "dropped: '&& touch /tmp/done'"),
        ("/opt/bin/add -n 3 >>/var/log/add.log 2>&1", "add", "'>>/var/log/add.log' is not"),
        ("exec /opt/bin/job 2> /tmp/err &", "job", "redirection '2> /tmp/err' is not carried"),
        ("/opt/bin/add | tee $HOME/log", "add", "dropped: '| tee $HOME/log'"),
        ("cd /opt/panda && ./run_tidy.sh", "run_tidy", "working directory (/opt/panda)"),
        ("X509_USER_PROXY=/tmp/p /opt/bin/add", "add", "X509_USER_PROXY=/tmp/p is not carried"),
        (
            "/opt/bin/add%line one%line two",
            "add",
            "standard input) is dropped: 'line one%line two'",
        ),
    ],
)
def test_what_is_dropped_is_warned_about(command: str, name: str, warning: str) -> None:
    result = read_command(command)
    assert result.name == name
    assert any(warning in text for text in result.warnings), result.warnings


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("/opt/bin/add 'oops", "unterminated single quote"),
        ('/opt/bin/add "oops', "unterminated double quote"),
        ("flock -n /tmp/l /opt/bin/add", "starts with 'flock'"),
        ("python -c 'import x'", "inline code"),
        ("python", "without a script"),
        ("/opt/bin/add >", "has no target"),
        ("> /dev/null", "has no command"),
        ("/opt/bin/", "gives no script name"),
        ("/opt/bin/job --date $(date +%Y%m%d)", r"command substitution \('\$\(date' in"),
        ("/opt/bin/job `hostname`", r"command substitution \('`hostname`'"),
        ('/opt/bin/job "$HOME/x"', r"a variable \('\$HOME/x'"),
        ("/opt/bin/job ${DAYS:-3}", "a variable"),
        ("bash -c '/opt/bin/job $1' x", "a variable"),
        ("cd /opt && /opt/bin/job $?", "a variable"),
    ],
)
def test_commands_without_a_script_are_errors(command: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_command(command)


# -- the sync rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cron_period", "options", "expected"),
    [
        ("a", 240, Options(), (True, 240)),
        ("a", 540, Options(servers=9), (True, 60)),  # exactly the threshold: sync
        ("a", 539, Options(servers=9), (False, 539)),
        ("a", 300, Options(servers=9, min_sync_period=30), (True, 300 / 9)),
        ("a", 300, Options(servers=9, sync=frozenset({"a"})), (True, 300 / 9)),
        ("a", 21600, Options(servers=9, no_sync=frozenset({"a"})), (False, 21600)),
    ],
)
def test_sync_rule(name: str, cron_period: float, options: Options, expected: object) -> None:
    assert sync_rule(name, cron_period, options) == expected


def test_an_irregular_schedule_warns_with_its_line_and_intervals() -> None:
    entries, notes = converted(["", "0 9,17 * * * /opt/bin/panda_server-tidy"], Options(servers=7))
    assert entries == {"tidy": '{"period": 6171.4, "sync": true}'}
    assert notes == [
        "crontab:2: warning: irregular schedule '0 9,17 * * *': the intervals between runs"
        " are 8h, 16h; using their average, 12h (43200 s)"
    ]


def test_a_name_that_is_not_an_identifier_is_an_error_unless_mapped() -> None:
    lines = ["* * * * * /opt/bin/copy-files.sh", "*/2 * * * * /opt/bin/import.py"]
    entries, notes = converted(lines)
    assert entries == {}
    assert [note.split(": ")[0:2] for note in notes] == [
        ["crontab:1", "error"],
        ["crontab:2", "error"],
    ]
    assert "'copy-files' is not a Python identifier" in notes[0]
    entries, notes = converted(
        lines, Options(module_map={"copy-files": "copyFiles", "import": "importer"})
    )
    assert entries == {
        "copy-files": '{"module": "copyFiles", "period": 60, "sync": true}',
        "import": '{"module": "importer", "period": 120, "sync": true}',
    }
    assert notes == []


def test_an_identical_repeated_line_is_converted_once_with_a_warning() -> None:
    entries, notes = converted(
        [PILOT, "", PILOT.replace("* atlpan", "*\tatlpan  ")], Options(servers=9)
    )
    assert list(entries) == ["pilot_streaming"]
    assert notes == ["crontab:3: warning: repeats line 1 ('pilot_streaming'); converted once"]


def test_the_same_name_with_another_schedule_is_an_error_naming_both_lines() -> None:
    lines = ["0 9 * * * /opt/bin/report day", "0 21 * * * /opt/bin/report night"]
    entries, notes = converted(lines)
    assert entries == {"report": '{"period": 86400, "sync": true, "arguments": ["day"]}'}
    assert len(notes) == 1
    assert notes[0].startswith(
        "crontab:2: error: the script name 'report' is already taken by line 1"
    )


def test_different_users_and_unused_options_warn() -> None:
    lines = ["* * * * * atlpan /opt/bin/a", "* * * * * root /opt/bin/b"]
    jobs, _ = read_crontab(lines)
    result = convert(jobs, Options(sync=frozenset({"c"}), module_map={"d": "dd"}))
    assert result.users == ["atlpan", "root"]
    assert [n.render("ct") for n in result.diagnostics] == [
        "ct:2: warning: runs as 'root', but line 1 runs as 'atlpan': the daemon runs every"
        " script as one user",
        "ct: warning: --sync c matches no crontab line",
        "ct: warning: the module map entry 'd' matches no crontab line",
    ]
    assert not result.failed


# -- output -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(240.0, 240), (2400.0, 2400), (43200 / 7, 6171.4), (0.04, 0.04), (60.25, 60.2)],
)
def test_period_value(seconds: float, shown: float) -> None:
    assert period_value(seconds) == shown
    assert isinstance(period_value(seconds), int) is float(shown).is_integer()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (45, "45s"), (21600, "6h"), (93784, "1d 2h 3m 4s")]
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text


def test_config_text_is_json_indented_to_paste_under_config() -> None:
    jobs, _ = read_crontab([ADD, COPY])
    text = format_config(convert(jobs, Options(servers=9)).scripts)
    assert text.splitlines() == [
        "{",
        '        "add": {"period": 240},',
        '        "copyArchive": {"period": 2400, "sync": true}',
        "    }",
    ]
    assert json.loads(text) == {
        "add": {"period": 240},
        "copyArchive": {"period": 2400, "sync": True},
    }
    assert format_config([]) == "{}"


def test_section_output_loads_without_problems(tmp_path: Path) -> None:
    lines = [ADD, COPY, PILOT, "*/10 * * * * atlpan python /opt/x/tidy.py --days 3 >/dev/null"]
    jobs, _ = read_crontab(lines)
    result = convert(
        jobs,
        Options(
            servers=9, no_sync=frozenset({"add"}), module_map={"pilot_streaming": "pilotStreaming"}
        ),
    )
    path = tmp_path / "panda_server.cfg"
    path.write_text(format_section(result.scripts, result.users) + "\n")
    daemon = load_config(str(path)).daemon
    assert daemon.problems == []
    assert (daemon.enable, daemon.package, daemon.n_proc) == (
        True,
        "pandaserver.daemons.scripts",
        4,
    )
    specs = {
        name: (spec.module, spec.period, spec.sync, spec.arguments)
        for name, spec in daemon.scripts.items()
    }
    assert specs == {
        "add": ("add", 240.0, False, ()),
        "copyArchive": ("copyArchive", 2400.0, True, ()),
        "pilot_streaming": ("pilotStreaming", 300.0, False, ()),
        "tidy": ("tidy", 66.7, True, ("--days", "3")),  # 600 s / 9 servers
    }


def test_section_with_few_scripts_uses_one_worker_each() -> None:
    jobs, _ = read_crontab([ADD])
    text = format_section(convert(jobs, Options()).scripts)
    assert "n_proc = 1" in text.splitlines()
    assert "# the crontab lines ran as" not in text


# -- module map -----------------------------------------------------------------------------


def test_module_map_reads_names_comments_and_reports_bad_lines() -> None:
    mapping, problems = read_module_map(
        [
            "# scripts whose module differs",
            "pilot_streaming = pilotStreaming  # renamed in 0.0.5",
            "",
            "copy-files=pkg.copyFiles",
            "no equals sign",
            "bad = not-a-module",
            "pilot_streaming = other",
        ]
    )
    assert mapping == {"pilot_streaming": "pilotStreaming", "copy-files": "pkg.copyFiles"}
    assert [(p.line, p.severity) for p in problems] == [(5, "error"), (6, "error"), (7, "error")]
    assert "first on line 2" in problems[2].message


# -- the command as a whole ---------------------------------------------------------------


def test_a_bad_line_is_reported_and_the_rest_still_converted() -> None:
    status, out, err = cli([], f"{ADD}\n61 * * * * atlpan /bin/x\n{COPY}\n")
    assert status == RET_FAILED
    assert list(entry_lines(out)) == ["add", "copyArchive"]
    assert err.startswith("<stdin>:2: error: invalid schedule '61 * * * *'")


def test_no_entries_at_all_is_an_error() -> None:
    status, out, err = cli([], "# only a comment\n")
    assert (status, out) == (RET_FAILED, "{}\n")
    assert err == "<stdin>: error: no crontab entries found\n"


def test_sync_and_no_sync_for_the_same_name_is_a_usage_error() -> None:
    status, out, err = cli(["--sync", "add", "--no-sync", "add"], ADD)
    assert (status, out) == (RET_CONFIG, "")
    assert "--sync and --no-sync both name: add" in err


def test_a_bad_module_map_is_a_usage_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "modules.map"
    path.write_text("ok = fine\nbroken\n")
    status, out, err = cli(["--module-map", str(path)], ADD)
    assert (status, out) == (RET_CONFIG, "")
    assert f"{path}:2: error: expected 'name = module'" in err


@pytest.mark.parametrize(("line", "options", "reason"), [
    ("@yearly /opt/bin/job", Options(), "a period of 365d 6h (31557600 s), longer than"),
    ("0 0 29 2 * /opt/bin/job", Options(), "a period of 1461d (126230400 s), longer than"),
    ("0 0 29 2 * /opt/bin/job", Options(servers=4), "(31557600 s) shared by 4 servers"),
    ("* * * * * /opt/bin/job", Options(servers=2000, sync=frozenset({"job"})),
     "a period of 0.03 s shared by 2000 servers, shorter than the daemon's shortest, 0.1 s"),
])
def test_a_period_the_config_refuses_is_not_converted(line: str, options: Options,
                                                      reason: str) -> None:
    entries, notes = converted([line], options)
    assert entries == {}
    assert len(notes) == 1 and "crontab:1: error: the schedule" in notes[0], notes
    assert reason in notes[0] and "not converted" in notes[0]
    # within the bounds: converted, as check-config accepts it (8 servers: 182 d 15 h)
    assert "job" in converted(["0 0 29 2 * /opt/bin/job"], Options(servers=8))[0]

"""cron2json as an operator runs it: ``python -m pandaserver.commands.cron`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pandaserver.config import load_config

CRONTAB = """\
# /etc/cron.d/panda: the PanDA server scripts
MAILTO=""
0-59/4 * * * * atlpan /opt/panda/usr/bin/panda_server-add > /dev/null 2>&1
5 1-19/6 * * * atlpan /opt/panda/usr/bin/panda_server-copyArchive > /dev/null 2>&1

0-59/5 * * * * atlpan /opt/panda/usr/bin/panda_server-pilot_streaming > /dev/null 2>&1
"""
EXPECTED = """\
{
        "add": {"period": 240},
        "copyArchive": {"period": 2400, "sync": true},
        "pilot_streaming": {"module": "pilotStreaming", "period": 300}
    }
"""


def cron2json(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pandaserver.commands.cron", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def module_map(tmp_path: Path) -> Path:
    path = tmp_path / "modules.map"
    path.write_text("# script name = module\npilot_streaming = pilotStreaming\n")
    return path


def test_the_worked_examples_from_stdin(module_map: Path) -> None:
    """``--periods``: the guide's approximation, as before cron schedules."""
    result = cron2json("--servers", "9", "--no-sync", "add", "--module-map", str(module_map),
                       "--periods", stdin=CRONTAB)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == EXPECTED


def test_by_default_a_schedule_no_period_expresses_stays_a_cron_entry(module_map: Path) -> None:
    """copyArchive's 01:05, 07:05, 13:05, 19:05 are kept; the plain intervals stay periods."""
    result = cron2json(
        "--servers", "9", "--no-sync", "add", "--module-map", str(module_map), stdin=CRONTAB
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == EXPECTED.replace('{"period": 2400, "sync": true}',
                                             '{"cron": "5 1-19/6 * * *", "sync": true}')


@pytest.mark.parametrize(
    ("argv", "with_map", "line_number", "expected"),
    [
        (["--no-sync", "add"], False, 3, '"add": {"period": 240}'),
        (["--servers", "9", "--periods"], False, 4,
         '"copyArchive": {"period": 2400, "sync": true}'),
        (["--servers", "9"], False, 4, '"copyArchive": {"cron": "5 1-19/6 * * *", "sync": true}'),
        (
            ["--servers", "9"],
            True,
            6,
            '"pilot_streaming": {"module": "pilotStreaming", "period": 300}',
        ),
    ],
)
def test_each_worked_example_alone_from_a_file(
    tmp_path: Path,
    module_map: Path,
    argv: list[str],
    with_map: bool,
    line_number: int,
    expected: str,
) -> None:
    crontab = tmp_path / "panda.cron"
    crontab.write_text(CRONTAB.splitlines()[line_number - 1] + "\n")
    if with_map:
        argv = [*argv, "--module-map", str(module_map)]
    result = cron2json(*argv, str(crontab))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["{", f"        {expected}", "    }"]


def test_a_bad_line_names_file_and_line_and_the_rest_is_converted(tmp_path: Path) -> None:
    crontab = tmp_path / "panda.cron"
    crontab.write_text(
        "*/10 * * * * /opt/panda/usr/bin/panda_server-tidy.py --days 3\n"
        "61 * * * * /opt/panda/usr/bin/panda_server-broken\n"
        "@reboot /opt/panda/usr/bin/panda_server-boot\n"
        "0 9,17 * * * /opt/panda/usr/bin/panda_server-report 2>&1 | mail -s report ops\n"
    )
    messages = [
        f"{crontab}:2: error: invalid schedule '61 * * * *': [61 * * * *] is not acceptable,"
        " out of range",
        f"{crontab}:3: error: @reboot runs once at boot and has no period: start that command"
        " with the service instead",
        f"{crontab}:4: warning: only the first command is converted; dropped:"
        " '| mail -s report ops'",
    ]
    tidy = '        "tidy": {"period": 600, "sync": true, "arguments": ["--days", "3"]},\n'
    result = cron2json(str(crontab))
    assert result.returncode == 1
    assert result.stderr.splitlines() == messages
    assert result.stdout == "{\n" + tidy + '        "report": {"cron": "0 9,17 * * *", "sync": true}\n    }\n'
    result = cron2json("--periods", str(crontab))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        *messages,
        f"{crontab}:4: warning: irregular schedule '0 9,17 * * *': the intervals between runs"
        " are 8h, 16h; using their average, 12h (43200 s)",
    ]
    assert result.stdout == "{\n" + tidy + '        "report": {"period": 43200, "sync": true}\n    }\n'


def test_section_output_passes_the_config_loader(tmp_path: Path, module_map: Path) -> None:
    result = cron2json(
        "--section", "--servers", "9", "--module-map", str(module_map), "-", stdin=CRONTAB
    )
    assert result.returncode == 0
    assert result.stdout.startswith("[daemon]\nenable = True\n")
    config = tmp_path / "panda_server.cfg"
    config.write_text(result.stdout)
    daemon = load_config(str(config)).daemon
    assert daemon.problems == []
    scripts = daemon.scripts
    assert {name: (s.module, s.period, s.sync) for name, s in scripts.items()} == {
        "add": ("add", 240.0, False),  # 240 s / 9 is under the 60 s threshold
        # a cron schedule's period is its shortest interval between firings (6 h)
        "copyArchive": ("copyArchive", 21600.0, True),
        "pilot_streaming": ("pilotStreaming", 300.0, False),
    }
    assert scripts["copyArchive"].cron is not None and scripts["add"].cron is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/nonexistent/panda.cron"], "cron2json: error: cannot read /nonexistent/panda.cron"),
        (["--servers", "0"], "--servers: must be at least 1, got: 0"),
        (["--module-map", "/nonexistent/map"], "cron2json: error: cannot read /nonexistent/map"),
        (["--sync", "add", "--no-sync", "add"], "--sync and --no-sync both name: add"),
    ],
)
def test_usage_errors_exit_2_and_print_no_config(argv: list[str], message: str) -> None:
    result = cron2json(*argv, stdin=CRONTAB)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr


AWKWARD_CRONTAB = """\
*/5 * * * * atlpan /opt/panda/usr/bin/panda_server-dummy_test.py > /dev/null 2>&1
@yearly atlpan /opt/panda/usr/bin/panda_server-tmp_cleanup --all
0 0 29 2 * atlpan /opt/panda/usr/bin/panda_server-dummy_loop
17 3 * * * atlpan /opt/panda/usr/bin/panda_server-tmp_cleanup --date $(date +\\%Y\\%m\\%d)
@weekly atlpan /opt/panda/usr/bin/panda_server-tmp_cleanup --keep "$DAYS" >> /var/log/t.log
@monthly atlpan /opt/panda/usr/bin/panda_server-tmp_cleanup --keep 7 >> /var/log/t.log 2>&1
"""


def test_every_emitted_entry_passes_the_real_check_config(tmp_path: Path) -> None:
    """A period over the config's bound or a shell expansion in the arguments is reported
    as not convertible; what is printed, the real check-config accepts."""
    result = cron2json("--section", "--periods", stdin=AWKWARD_CRONTAB)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert [line.split(": error: ")[0] for line in errors] == [
        "<stdin>:2", "<stdin>:3", "<stdin>:4", "<stdin>:5"
    ]
    assert "gives a period of 365d 6h (31557600 s), longer than the daemon's longest" in errors[0]
    assert "gives a period of 1461d (126230400 s)" in errors[1]
    assert "a command substitution ('$(date' in" in errors[2]
    assert "a variable ('$DAYS' in" in errors[3]
    assert "<stdin>:6: warning: the redirection '>> /var/log/t.log' is not carried over" in (
        result.stderr
    )
    config = tmp_path / "panda_server.cfg"
    config.write_text(result.stdout)
    env = {**os.environ, "PANDA_NO_ROOT": "1"}
    checked = subprocess.run(
        [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(config), "check-config"],
        capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "error(s)" not in checked.stdout and "problem(s)" not in checked.stdout
    assert "verdict: run starts 2 script(s)" in checked.stdout
    rows = {words[0]: words for line in checked.stdout.splitlines() if (words := line.split())}
    assert rows["dummy_test"][3] == "300"
    assert rows["tmp_cleanup"][3] == "2.6298e+06"  # the monthly line: the only one converted


def test_by_default_yearly_and_leap_day_lines_become_cron_entries_check_config_accepts(
        tmp_path: Path) -> None:
    """No period bound stops a cron entry: @yearly and Feb 29 are kept as written; the
    shell expansions are still refused, and the monthly line finds its name taken."""
    result = cron2json("--section", stdin=AWKWARD_CRONTAB)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert [line.split(": error: ")[0] for line in errors] == [
        "<stdin>:4", "<stdin>:5", "<stdin>:6"
    ]
    assert '"tmp_cleanup": {"cron": "@yearly", "sync": true, "arguments": ["--all"]}' in (
        result.stdout)
    assert '"dummy_loop": {"cron": "0 0 29 2 *", "sync": true}' in result.stdout
    config = tmp_path / "panda_server.cfg"
    config.write_text(result.stdout)
    checked = subprocess.run(
        [sys.executable, "-m", "pandaserver.daemons.master", "-c", str(config), "check-config"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PANDA_NO_ROOT": "1"}, cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verdict: run starts 3 script(s)" in checked.stdout
    rows = {words[0]: line for line in checked.stdout.splitlines() if (words := line.split())}
    assert "cron @yearly" in rows["tmp_cleanup"] and "cron 0 0 29 2 *" in rows["dummy_loop"]

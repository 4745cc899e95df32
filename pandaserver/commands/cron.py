"""``panda-daemon cron2json``: print the ``config`` JSON for crontab entries.

The main CLI registers the subcommand with ``add_arguments`` and ``run``; ``python -m
pandaserver.commands.cron`` runs it on its own. The JSON (or ``[daemon]`` section) goes to
stdout; warnings and errors go to stderr, each as ``SOURCE:LINE: severity: message``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from pandaserver.commands.argtypes import positive_int
from pandaserver.config.cronspec import CronError, zone_of
from pandaserver.cron.convert import (
    DEFAULT_MIN_SYNC_PERIOD,
    Options,
    convert,
    format_config,
    format_section,
    read_module_map,
)
from pandaserver.cron.parse import Diagnostic, read_crontab
from pandaserver.exitcodes import RET_CONFIG, RET_FAILED, RET_OK

# exit statuses: RET_FAILED when some lines were not converted (the rest are printed),
# RET_CONFIG for bad options or unreadable files (nothing is printed)

PROG = "cron2json"
DESCRIPTION = (
    "Convert crontab lines (a user crontab, or a system crontab with a user field) into the"
    " [daemon] config JSON. A schedule that is a plain interval (evenly spaced, an hour"
    " apart or less) becomes a period; any other keeps its cron expression (--periods:"
    " approximate it by a period). Scripts are synchronised across the servers unless that"
    " makes the fleet-wide period too short."
)


class UsageError(Exception):
    """Options or input files that make the conversion impossible (RET_CONFIG)."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or a positive number, got: {text!r}")
    return value


def add_cron_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``cron2json`` on the ``panda-daemon`` parser: run without a configuration."""
    cron = sub.add_parser(PROG, help="convert crontab lines into daemon config JSON")
    add_arguments(cron)
    cron.set_defaults(func=None, plain=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cron2json options and the input argument to ``parser``."""
    if parser.description is None:
        parser.description = DESCRIPTION
    parser.add_argument(
        "input", nargs="?", default="-", metavar="FILE|-",
        help="the crontab to read; '-' or nothing reads standard input",
    )
    parser.add_argument(
        "--servers", type=positive_int, default=1, metavar="N",
        help="how many servers each ran the cron entries (default: 1)",
    )
    parser.add_argument(
        "--sync", action="append", default=None, metavar="NAME",
        help="run script NAME on one server at a time whatever its period (repeatable)",
    )
    parser.add_argument(
        "--no-sync", action="append", default=None, metavar="NAME",
        help="run script NAME on every server independently (repeatable)",
    )
    parser.add_argument(
        "--min-sync-period", type=_seconds, default=DEFAULT_MIN_SYNC_PERIOD, metavar="SECONDS",
        help="below this fleet-wide period a script stays per-server (default: %(default)g)",
    )
    parser.add_argument(
        "--module-map", metavar="FILE",
        help="'name = module' lines for scripts whose module name differs from their name",
    )
    parser.add_argument(
        "--user-field", choices=("auto", "yes", "no"), default="auto",
        help="whether lines have a user field after the schedule, as a system crontab does"
        " (default: auto, decided line by line)",
    )
    parser.add_argument(
        "--periods", action="store_true",
        help="approximate every schedule by a period (the average interval), as before cron"
        " schedules existed, instead of keeping cron expressions",
    )
    parser.add_argument(
        "--timezone", metavar="ZONE",
        help="the IANA time zone the crontab's times were in, written into each cron entry"
        " (default: none, so UTC)",
    )
    parser.add_argument(
        "--section", action="store_true",
        help="print a whole [daemon] section instead of the config JSON alone",
    )


def run(args: argparse.Namespace) -> int:
    """Convert as ``args`` say; return the exit status."""
    return convert_streams(args, sys.stdin, sys.stdout, sys.stderr)


def convert_streams(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    try:
        options = _options(args)
        source, lines = _read_input(args.input, stdin)
    except UsageError as exc:
        for message in exc.args:
            stderr.write(f"{PROG}: error: {message}\n")
        return RET_CONFIG
    jobs, notes = read_crontab(lines, args.user_field)
    conversion = convert(jobs, options)
    notes.extend(conversion.diagnostics)
    if not jobs and not any(note.severity == "error" for note in notes):
        notes.append(Diagnostic(None, "error", "no crontab entries found"))
    _report(notes, source, stderr)
    if args.section:
        stdout.write(format_section(conversion.scripts, conversion.users) + "\n")
    else:
        stdout.write(format_config(conversion.scripts) + "\n")
    stdout.flush()
    failed = any(note.severity == "error" for note in notes)
    return RET_FAILED if failed else RET_OK


def _options(args: argparse.Namespace) -> Options:
    sync = frozenset(args.sync or ())
    no_sync = frozenset(args.no_sync or ())
    both = sorted(sync & no_sync)
    if both:
        raise UsageError(f"--sync and --no-sync both name: {', '.join(both)}")
    module_map: dict[str, str] = {}
    if args.module_map is not None:
        path, lines = _read_input(args.module_map, None)
        module_map, problems = read_module_map(lines)
        if problems:
            raise UsageError(*(note.render(path) for note in problems))
    timezone = getattr(args, "timezone", None)
    if timezone is not None:
        try:
            zone_of(timezone)
        except CronError as exc:
            raise UsageError(f"--timezone: {exc}") from None
    return Options(
        servers=args.servers,
        sync=sync,
        no_sync=no_sync,
        min_sync_period=args.min_sync_period,
        module_map=module_map,
        cron=not getattr(args, "periods", False),
        timezone=timezone,
    )


def _read_input(name: str, stdin: TextIO | None) -> tuple[str, list[str]]:
    """(name shown in messages, lines) of a file, or of ``stdin`` for ``-``."""
    try:
        if name == "-" and stdin is not None:
            return "<stdin>", stdin.read().splitlines()
        with open(name, encoding="utf-8") as handle:
            return name, handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {name}: {exc}") from None


def _report(notes: Sequence[Diagnostic], source: str, stderr: TextIO) -> None:
    """Write the diagnostics in input order; those about the whole input come last."""
    ordered = sorted(notes, key=lambda note: (note.line is None, note.line or 0))
    for note in ordered:
        stderr.write(note.render(source) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"panda-daemon {PROG}")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Which module defines each ``panda-daemon`` command, imported only for the command run.

``panda-daemon --help`` lists every command, but a command's module is imported only when
that command is the one given: ``status`` never imports the database layer, ``--help``
imports no command module at all. The parser is built in two passes (``parse``): the first,
with every command a bare name and its one-line help, finds which command was given (and
answers ``--help``, ``--version`` and bad global options as argparse always did); the
second adds that command's own arguments from its module and parses for real.

The one-line helps live here, for the first pass; ``tests/unit/test_cli_registry.py``
checks that they are the ones the modules give.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
    Adder = Callable[[SubParsers], None]


def _cron() -> Adder:
    from pandaserver.commands.cron import add_cron_subcommand

    return add_cron_subcommand


def _service() -> Adder:
    from pandaserver.commands.service import add_service_subcommands

    return add_service_subcommands


def _web() -> Adder:
    from pandaserver.commands.web import add_web_subcommands

    return add_web_subcommands


def _database() -> Adder:
    from pandaserver.commands.database import add_db_subcommands

    return add_db_subcommands


def _config_value() -> Adder:
    from pandaserver.commands.configvalue import add_config_value

    return add_config_value


def _operator() -> Adder:
    from pandaserver.commands.operator import add_control_subcommands

    return add_control_subcommands


class Entry(NamedTuple):
    name: str
    help: str
    family: Callable[[], Adder] | None  # None: defined by the caller (``own``)


COMMANDS: tuple[Entry, ...] = (
    Entry("run", "run the master in the foreground, logging to stderr", None),
    Entry("check-config", "show the scripts as they will run and every problem", None),
    Entry("run-once", "run one script once in the foreground", None),
    Entry("cron2json", "convert crontab lines into daemon config JSON", _cron),
    Entry("start", "start the master as a service; returns once it is up", _service),
    Entry("stop", "stop the master and everything it started", _service),
    Entry("status", "say whether the master runs (exit 0) or not (exit 3)", _service),
    Entry("restart", "stop, then start (refused while the config cannot start)", _service),
    Entry("reload", "make the master re-read the config (SIGHUP)", _service),
    Entry("reopen-logs", "make the master reopen its log files (SIGUSR1; logrotate)",
          _service),
    Entry("web", "serve the fleet pages, their JSON API and /metrics (gunicorn; read-only;"
                 " localhost by default)", _web),
    Entry("fleet", "every server and script of the fleet, from the database", _web),
    Entry("logs", "the recent log records of one script (worker log)", _web),
    Entry("history", "show recent runs from the database", _database),
    Entry("locks", "show the sync-script leases", _database),
    Entry("unlock", "free a sync-script lease whoever holds it (fences the old holder)",
          _database),
    Entry("db", "database maintenance", _database),
    Entry("pause", "start no new run of a script, fleet-wide or on one server", _operator),
    Entry("resume", "schedule a paused script again (and reset its crash back-off)",
          _operator),
    Entry("run-now", "one extra run of a script as soon as a worker is free", _operator),
    Entry("kill", "kill a script's run in progress (recorded as killed)", _operator),
    Entry("drain", "a server takes no new sync lease (patch it without a gap)", _operator),
    Entry("undrain", "a drained server takes sync leases again", _operator),
    Entry("restart-workers", "recycle every worker of the local master (--server-name), one"
                             " at a time, losing no run", _operator),
    Entry("commands", "recent operator commands and who acted when", _operator),
    Entry("config-value", "set, show or delete the values scripts read with"
                          " tbuf.getConfigValue", _config_value),
)
BY_NAME = {entry.name: entry for entry in COMMANDS}


class _Only:
    """The subparsers action as a command family's adder sees it: only the command wanted
    becomes a real subparser; the family's others go to throwaway parsers."""

    def __init__(self, sub: SubParsers, wanted: str) -> None:
        self._sub = sub
        self._wanted = wanted

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name == self._wanted:
            return self._sub.add_parser(name, **kwargs)
        kwargs.pop("help", None)
        return argparse.ArgumentParser(prog=name, **kwargs)


def add_commands(sub: SubParsers, wanted: str | None,
                 own: Callable[[SubParsers, str], None]) -> None:
    """Every command on ``sub``, in the order of ``COMMANDS``: ``wanted`` with its arguments
    (from its module, or ``own(sub, name)`` for the commands the caller defines), the others
    as a bare name and help (without ``-h``, so that the first pass leaves ``CMD --help`` to
    the second)."""
    for entry in COMMANDS:
        if entry.name != wanted:
            sub.add_parser(entry.name, help=entry.help, add_help=False)
        elif entry.family is None:
            own(sub, entry.name)
        else:
            entry.family()(_Only(sub, entry.name))  # type: ignore[arg-type]


def parse(make_parser: Callable[[str | None], argparse.ArgumentParser],
          argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """``make_parser(None)`` finds the command (exits as argparse does on a bad line or a
    top-level ``--help``); ``make_parser(command)`` parses the line with its arguments."""
    first, _ = make_parser(None).parse_known_args(argv)
    parser = make_parser(first.command)
    return parser, parser.parse_args(argv)

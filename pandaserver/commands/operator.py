"""Operator commands: ``pause``, ``resume``, ``run-now``, ``kill``, ``drain``, ``undrain``,
``restart-workers``, and ``commands`` (the recent ones, and who acted).

Each records one row in the shared database (who asked, when) and exits 0; every master
reads it at once on PostgreSQL (notified), else within ``[daemon] command_interval``
seconds, and records when it acted. ``--wait`` blocks until every live server (or the one
named) has acted, or says which has not.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import time
from collections.abc import Callable
from typing import Protocol

from pandaserver.commands.launch import server_name
from pandaserver.commands.messages import err
from pandaserver.config import PandaConfig
from pandaserver.config.problems import did_you_mean
from pandaserver.db.direct import operator_rows as dbcontrol
from pandaserver.db.direct.operator_rows import Ack, Command, Hold
from pandaserver.exitcodes import RET_CONFIG, RET_FAILED, RET_OK
from pandaserver.fmt import table, when

# {where}: " on S" for one server, "" fleet-wide; {anywhere}: " on S", or the fleet-wide words
EFFECT = {
    dbcontrol.PAUSE: "no new run of it starts{anywhere}; a run in progress finishes",
    dbcontrol.RESUME: "it is scheduled again{anywhere}",
    dbcontrol.RUN_NOW: "one extra run{anywhere}",
    dbcontrol.KILL: "its run in progress{anywhere} is killed (SIGTERM, then SIGKILL) and"
                    " recorded as killed",
    dbcontrol.DRAIN: "it finishes what it runs and takes no new sync lease; the other"
                     " servers take its sync scripts",
    dbcontrol.UNDRAIN: "it takes sync leases again",
    dbcontrol.RESTART_WORKERS: "every worker{where} is replaced, one at a time (a busy one"
                               " after its run)",
}
FLEET_WIDE = {
    dbcontrol.PAUSE: " on any server",
    dbcontrol.RESUME: " on every server",
    dbcontrol.RUN_NOW: ", on the first server that takes it",
    dbcontrol.KILL: " on whichever server runs it",
}
# the commands that name a server of the fleet (--server, or drain's SERVER)
NAMES_A_SERVER = (dbcontrol.PAUSE, dbcontrol.RESUME, dbcontrol.RUN_NOW, dbcontrol.KILL,
                  dbcontrol.DRAIN, dbcontrol.UNDRAIN)


class Operator(Protocol):
    """The operator's side of the command tables: ``operator_commands.ControlStore``
    (SQLAlchemy) or, on a SQLite file, ``operator_sqlite.SqliteControl`` (``sqlite3``)."""

    @property
    def pushed(self) -> bool:  # the masters are notified at once (PostgreSQL)
        ...

    def issue(self, verb: str, target: str, server: str | None, reason: str | None,
              requested_by: str) -> Command: ...

    def servers(self) -> list[tuple[str, float]]: ...

    def holds(self) -> list[Hold]: ...

    def acks(self, command_id: int) -> list[Ack]: ...

    def recent(self, limit: int = 50) -> list[Command]: ...


def requester() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def cmd_control(cfg: PandaConfig, args: argparse.Namespace) -> int:
    verb: str = args.verb
    if verb in (dbcontrol.DRAIN, dbcontrol.UNDRAIN):
        target, server = args.target, args.target
    elif verb == dbcontrol.RESTART_WORKERS:
        target, server = "*", server_name(args)
    else:
        target, server = args.target, args.server
        if target not in cfg.daemon.scripts:
            err(f"no script {target!r} in the config of {cfg.path}"
                f"{did_you_mean(target, cfg.daemon.scripts)}")
            return RET_CONFIG
    return _on_control_db(cfg, lambda store: _issue(
        cfg, args, store, verb=verb, target=target, server=server))


def _on_control_db(cfg: PandaConfig, body: Callable[[Operator], int]) -> int:
    """``body(store)`` on the configured database, its schema checked. A bad database
    setting, a refused schema or a database error is said on stderr and becomes the exit
    status. A SQLite file is reached through ``sqlite3`` (no SQLAlchemy to import: the
    command answers at once), every other database through SQLAlchemy."""
    from pandaserver.db.direct.sqlitedirect import CommandRefused, opened, sqlite_file

    path = sqlite_file(cfg)
    if path is not None:
        from pandaserver.db.direct.operator_sqlite import SqliteControl

        try:
            with opened(path) as conn:
                return body(SqliteControl(conn))
        except CommandRefused as exc:
            err(str(exc))
            return exc.code
    from pandaserver.commands.database import open_database, run_command
    from pandaserver.db.stores.operator_commands import ControlStore

    def on_database() -> int:
        with open_database(cfg) as engine:
            return body(ControlStore(engine))

    return run_command(on_database)


def _issue(cfg: PandaConfig, args: argparse.Namespace, store: Operator, *, verb: str,
           target: str, server: str | None) -> int:
    """Record the command, say what it does and who will act; ``--wait`` for them."""
    rows = store.servers()
    alive_for = dbcontrol.ALIVE_BEATS * cfg.daemon.heartbeat_interval  # as the pages count
    live = [name for name, age in rows if age <= alive_for]
    if server is not None and verb in NAMES_A_SERVER and not getattr(args, "force", False):
        known = {name for name, _ in rows} | {h.server for h in store.holds()} - {dbcontrol.EVERY}
        if server not in known:
            err(f"no server {server!r} has ever run on this database"
                f"{did_you_mean(server, known)}; known servers:"
                f" {', '.join(sorted(known)) or 'none'}. Nothing was recorded: give a"
                " known name, or --force to record it for a server that has not started yet")
            return RET_CONFIG
    command = store.issue(verb, target, server, getattr(args, "reason", None), requester())
    expected = [server] if server is not None else live
    where = f" on {server}" if server is not None and verb not in (
        dbcontrol.DRAIN, dbcontrol.UNDRAIN) else ""
    anywhere = where or FLEET_WIDE.get(verb, "")
    subject = f"server {target}" if verb in (dbcontrol.DRAIN, dbcontrol.UNDRAIN) else \
        "the local master's workers" if verb == dbcontrol.RESTART_WORKERS else target
    print(f"{verb} {subject}: recorded as command {command.id} by {command.requested_by}"
          f" at {when(command.requested_at)} UTC")
    print(f"  {EFFECT[verb].format(where=where, anywhere=anywhere)}")
    print(f"  live servers: {', '.join(live) or 'none'}; each acts "  # docs/multi-server.md
          + ("at once (notified by the database)" if store.pushed else
             f"within {cfg.daemon.command_check(False):g} s (command_interval)"))
    if server is not None and server not in live:
        print(f"  note: {server} is not live now; it acts when it runs again"
              if verb in (dbcontrol.PAUSE, dbcontrol.DRAIN, dbcontrol.RESUME,
                          dbcontrol.UNDRAIN) else
              f"  note: {server} is not live now: nothing will act on this")
    if not args.wait:
        return RET_OK
    return _wait(store, command.id, expected, args.timeout)


def _wait(store: Operator, command_id: int, expected: list[str],
          timeout: float, sleep: Callable[[float], None] = time.sleep) -> int:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while True:
        for ack in store.acks(command_id):
            if ack.server not in seen:
                seen.add(ack.server)
                print(f"  {ack.server}: {ack.note or 'done'} (at {when(ack.acted_at)} UTC)")
        missing = [s for s in expected if s not in seen]
        if not missing:
            return RET_OK
        if time.monotonic() >= deadline:
            print(f"not acted on within {timeout:g} s by: {', '.join(missing)}")
            return RET_FAILED
        sleep(0.2)


def cmd_commands(cfg: PandaConfig, args: argparse.Namespace) -> int:
    """``commands``: the recent operator commands, the holds in force, who acted when."""
    return _on_control_db(cfg, lambda store: _list_commands(store, args.limit))


def _list_commands(store: Operator, limit: int) -> int:
    holds = store.holds()
    rows = [["ID", "VERB", "TARGET", "SERVER", "BY", "AT (UTC)", "REASON", "ACTED"]]
    for c in store.recent(limit):
        acted = ", ".join(f"{a.server}: {a.note}" for a in store.acks(c.id))
        rows.append([str(c.id), c.verb, c.target, c.server or "*", c.requested_by,
                     when(c.requested_at), c.reason or "", acted or "-"])
    print("in force: " + ("; ".join(
        f"{h.kind} {h.name}{'' if h.server in (h.name, dbcontrol.EVERY) else ' on ' + h.server}"
        f" by {h.requested_by}{' (' + h.reason + ')' if h.reason else ''}" for h in holds)
        or "nothing paused or drained"))
    print("\n".join(table(rows)))
    return RET_OK


def _force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="record it even for a server that has never run on this database"
                             " (one not started yet); without it such a name is refused")


def add_control_subcommands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser, verb: str, reason: bool = False) -> None:
        if reason:
            parser.add_argument("--reason", default=None, metavar="TEXT",
                                help="why (recorded, shown in status, fleet and the pages)")
        parser.add_argument("--wait", action="store_true",
                            help="wait until every live server (or the one named) has acted")
        parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                            help="how long --wait waits (default 30 s)")
        parser.set_defaults(func=cmd_control, verb=verb)

    for verb, helptext, reason in (
            (dbcontrol.PAUSE, "start no new run of a script, fleet-wide or on one server",
             True),
            (dbcontrol.RESUME, "schedule a paused script again (and reset its crash back-off)",
             False),
            (dbcontrol.RUN_NOW, "one extra run of a script as soon as a worker is free",
             False),
            (dbcontrol.KILL, "kill a script's run in progress (recorded as killed)", True)):
        parser = sub.add_parser(verb, help=helptext)
        parser.add_argument("target", metavar="NAME", help="the script's name")
        parser.add_argument("--server", default=None, metavar="S",
                            help="only on this server (default: every server)")
        _force(parser)
        common(parser, verb, reason)
    for verb, helptext, reason in (
            (dbcontrol.DRAIN, "a server takes no new sync lease (patch it without a gap)", True),
            (dbcontrol.UNDRAIN, "a drained server takes sync leases again", False)):
        parser = sub.add_parser(verb, help=helptext)
        parser.add_argument("target", metavar="SERVER", help="the server's name in the fleet")
        _force(parser)
        common(parser, verb, reason)
    parser = sub.add_parser(dbcontrol.RESTART_WORKERS,
                            help="recycle every worker of the local master (--server-name),"
                                 " one at a time, losing no run")
    common(parser, dbcontrol.RESTART_WORKERS, True)
    listing = sub.add_parser("commands", help="recent operator commands and who acted when")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    listing.set_defaults(func=cmd_commands)

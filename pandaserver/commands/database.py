"""CLI commands on the database: ``history``, ``locks``, ``unlock``, ``db upgrade``.

``add_db_subcommands(subparsers)`` registers them on the ``panda-daemon`` parser; each
sets ``func(cfg, args) -> int`` (an exit code). Human tables by default, ``--json``
for machines. Times are shown in UTC. Errors go to stderr, without passwords.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pandaserver.commands.argtypes import positive_int
from pandaserver.commands.messages import err
from pandaserver.config import PandaConfig
from pandaserver.config.problems import did_you_mean
from pandaserver.db.base.engine import DatabaseConfigError, describe_db_error, make_engine, safe_url
from pandaserver.db.base.schema import (
    ContractStep,
    SchemaError,
    UpgradeBlocked,
    check_schema,
    head_revision,
    known_revisions,
    recorded_oldest_code,
    steps,
    upgrade,
)
from pandaserver.db.stores.history import HistoryStore, with_finished
from pandaserver.db.stores.leases import LeaseRow, LeaseStore
from pandaserver.db.stores.runrecords import RunRow
from pandaserver.exitcodes import RET_CONFIG, RET_DATABASE, RET_FAILED, RET_OK, RET_SCHEMA
from pandaserver.fmt import span, table, when

Command = Callable[[PandaConfig, argparse.Namespace], int]


class CommandFailed(Exception):
    """What a command says on stderr before it exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def open_database(cfg: PandaConfig, *, check: bool = True) -> Iterator[Engine]:
    """The configured database, its schema checked (``check``), disposed after. A setting
    that names no usable database, a refused schema and a database error become
    ``CommandFailed`` with RET_CONFIG, RET_SCHEMA and RET_DATABASE."""
    try:
        engine = make_engine(cfg)
    except DatabaseConfigError as exc:
        raise CommandFailed(str(exc), RET_CONFIG) from None
    try:
        if check:
            check_schema(engine)
        yield engine
    except SchemaError as exc:
        raise CommandFailed(f"database {safe_url(engine.url)}: {exc}", RET_SCHEMA) from None
    except SQLAlchemyError as exc:
        raise CommandFailed(describe_db_error(exc, engine.url), RET_DATABASE) from None
    finally:
        engine.dispose()


def run_command(body: Callable[[], int]) -> int:
    """``body()``'s status, or the status of the ``CommandFailed`` it raised (said on
    stderr)."""
    try:
        return body()
    except CommandFailed as exc:
        err(str(exc))
        return exc.code


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _table(headers: list[str], rows: list[list[str]]) -> str:
    return "\n".join(table([headers, *rows]))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# --- history -------------------------------------------------------------------------

def _run_json(run: RunRow) -> dict[str, Any]:
    return {
        "id": run.id, "script": run.script, "server": run.server, "pid": run.pid,
        "generation": run.generation, "due_at": _iso(run.due_at),
        "started_at": _iso(run.started_at), "ended_at": _iso(run.ended_at),
        "duration": run.duration, "outcome": run.outcome, "error": run.error,
        "master_pid": run.master_pid, "run_id": run.run_id,
    }


def cmd_history(cfg: PandaConfig, args: argparse.Namespace) -> int:
    """``history [NAME] [--limit N] [--json]``: the newest runs first."""

    def body() -> int:
        with open_database(cfg) as engine:
            runs = HistoryStore(engine).query(args.name, args.limit)
        if args.json:
            _print_json([_run_json(run) for run in runs])
            return RET_OK
        if not runs:
            print(f"no runs recorded{f' for {args.name}' if args.name else ''}")
            return RET_OK
        rows = [
            [str(r.id), r.script, r.server, str(r.pid or "-"), when(r.started_at),
             span(r.duration), r.outcome, _first_line(r.error)]
            for r in runs
        ]
        print(_table(["ID", "SCRIPT", "SERVER", "PID", "STARTED (UTC)", "TOOK", "OUTCOME",
                      "ERROR"], rows))
        return RET_OK

    return run_command(body)


def _first_line(error: str | None, width: int = 60) -> str:
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    line = lines[-1] if lines else ""  # a traceback's last line says what happened
    return line if len(line) <= width else line[: width - 3] + "..."


# --- locks and unlock ------------------------------------------------------------------

def _state(lease: LeaseRow) -> str:
    """``held``; ``finished``: held, but its run has ended (the release has not landed yet:
    it rides on the holder's next grant); ``free``."""
    return "free" if not lease.held else "finished" if lease.finished else "held"


def _lease_json(lease: LeaseRow) -> dict[str, Any]:
    return {
        "name": lease.name, "held": lease.held, "state": _state(lease),
        "generation": lease.generation,
        "owner_server": lease.owner_server, "owner_pid": lease.owner_pid,
        "acquired_at": _iso(lease.acquired_at), "expires_at": _iso(lease.expires_at),
        "expires_in": lease.expires_in, "next_due": _iso(lease.next_due),
        "due_in": lease.due_in, "period": lease.period, "db_now": _iso(lease.db_now),
        "contended": lease.contended, "contended_by": lease.contended_by,
        "contended_at": _iso(lease.contended_at), "contended_ago": lease.contended_ago,
        "firing": _iso(lease.firing),  # a cron script's latest firing served (else null)
    }


def _contention(lease: LeaseRow) -> str:
    """``12, b 3.0s ago``: refused attempts ever, and the latest one's server and age."""
    if not lease.contended:
        return "0"
    latest = f", {lease.contended_by or '?'} {span(lease.contended_ago)} ago" \
        if lease.contended_at is not None else ""
    return f"{lease.contended}{latest}"


def cmd_locks(cfg: PandaConfig, args: argparse.Namespace) -> int:
    """``locks [--json]``: every sync-script lease, who holds it, and how often it refused
    another server (ever; the latest such server and when)."""

    def body() -> int:
        with open_database(cfg) as engine:
            leases = with_finished(engine, LeaseStore(engine).list_leases())
        if args.json:
            _print_json([_lease_json(lease) for lease in leases])
            return RET_OK
        if not leases:
            print("no leases yet (no sync script has run)")
            return RET_OK
        rows = [
            [lease.name, _state(lease),
             f"{lease.owner_server} pid {lease.owner_pid}" if lease.held else "-",
             str(lease.generation), when(lease.acquired_at),
             span(lease.expires_in) if lease.held else "-", span(lease.due_in),
             _contention(lease)]
            for lease in leases
        ]
        print(_table(["NAME", "STATE", "HOLDER", "GEN", "ACQUIRED (UTC)", "EXPIRES IN",
                      "DUE IN", "REFUSED (LATEST)"], rows))
        return RET_OK

    return run_command(body)


def cmd_unlock(cfg: PandaConfig, args: argparse.Namespace) -> int:
    """``unlock NAME``: free a lease whoever holds it, and say what was released."""

    def body() -> int:
        with open_database(cfg) as engine:
            store = LeaseStore(engine)
            before = store.force_release(args.name)
            names = [lease.name for lease in store.list_leases()] if before is None else []
            closed = 0 if before is None else HistoryStore(engine).close_lease_runs(
                args.name, before.generation, "its lease was force-released (panda-daemon"
                " unlock) while it was open: its holder died, hung or lost the lease")
        if before is None:
            raise CommandFailed(f"no lease named {args.name!r}{did_you_mean(args.name, names)}",
                        RET_FAILED)
        holder = f"{before.owner_server} pid {before.owner_pid}"
        if before.held:
            print(f"released lease {before.name!r}: held by {holder} since"
                  f" {when(before.acquired_at)} UTC (generation {before.generation},"
                  f" would have expired in {span(before.expires_in)})")
        else:
            print(f"lease {before.name!r} was not held (last holder {holder},"
                  f" generation {before.generation})")
        print(f"generation is now {before.generation + 1}: the old holder can no longer"
              f" release or renew it; next due in {span(before.due_in)}")
        if closed:
            print(f"{closed} open run(s) of it marked lost in the history (a holder still"
                  " alive records how they really end)")
        return RET_OK

    return run_command(body)


def cmd_db_upgrade(cfg: PandaConfig, args: argparse.Namespace) -> int:
    """``db upgrade``: create or migrate panda-daemon's tables to this version's schema; say
    each step applied (expand or contract) and which code works with the result."""

    def body() -> int:
        with open_database(cfg, check=False) as engine:
            try:
                before, after = upgrade(engine, allow_contract=getattr(args, "contract", False))
            except UpgradeBlocked as exc:
                raise CommandFailed(f"database {safe_url(engine.url)}: {exc}",
                                    RET_DATABASE) from None
            except ContractStep as exc:
                raise CommandFailed(f"database {safe_url(engine.url)}: {exc}",
                                    RET_FAILED) from None
            oldest = recorded_oldest_code(engine, after)
            where = safe_url(engine.url)
        if before == after and after not in known_revisions():
            print(f"database {where}: schema {after} is newer than this panda-daemon (head"
                  f" {head_revision()}) and records that it works with it: nothing to do"
                  " (a newer release migrated it; upgrade panda-daemon on this server in its"
                  " turn)")
            return RET_OK
        if before == after:
            print(f"database {where}: schema already at {after}")
        else:
            print(f"database {where}: schema upgraded from {before or 'nothing'} to {after}")
            for step in steps(after, before):
                print(f"  {step.revision} {step.compatibility:<8} {step.summary}")
        if oldest is not None:
            print(f"works with panda-daemon code of schema {oldest} to {after}: servers still"
                  f" on a release of schema {oldest} or later keep running and may restart"
                  " as they are (releases before rolling upgrades refuse any newer schema:"
                  " docs/database.md, \"Rolling upgrades\")")
        return RET_OK

    return run_command(body)


def add_db_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``history``, ``locks``, ``unlock`` and ``db upgrade`` to the CLI's subparsers."""
    history = subparsers.add_parser("history", help="show recent runs from the database")
    history.add_argument("name", nargs="?", default=None, help="only this script")
    history.add_argument("--limit", type=positive_int, default=50,
                         help="how many runs (default 50)")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(func=cmd_history)

    locks = subparsers.add_parser("locks", help="show the sync-script leases")
    locks.add_argument("--json", action="store_true", help="print JSON")
    locks.set_defaults(func=cmd_locks)

    unlock = subparsers.add_parser(
        "unlock", help="free a sync-script lease whoever holds it (fences the old holder)"
    )
    unlock.add_argument("name", help="the script (lease) name")
    unlock.set_defaults(func=cmd_unlock)

    db = subparsers.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    db_upgrade = db_sub.add_parser("upgrade", help="create or migrate panda-daemon's tables")
    db_upgrade.add_argument(
        "--contract", action="store_true",
        help="also apply contract steps (after which older releases refuse the schema):"
             " only once every server runs a release that works with the result")
    db_upgrade.set_defaults(func=cmd_db_upgrade)

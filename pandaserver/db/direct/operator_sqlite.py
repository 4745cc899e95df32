"""The operator's statements on a SQLite file through ``sqlite3``, without SQLAlchemy.

``SqliteControl`` is ``operator_commands.ControlStore``'s operator side (issue a command,
read the holds, the servers, the acknowledgements, the recent commands) for a connection
from ``pandaserver.db.direct.sqlitedirect.opened``. It runs ``SQLITE``: the store's own
SQLAlchemy Core statements (``operator_commands.operator_statements``) compiled for SQLite
with named parameters, checked in so that no SQLAlchemy is imported to run them;
tests/unit/test_operator_sqlite_texts.py compiles them again and compares, so they cannot drift,
and an integration test compares the rows both paths write.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from pandaserver.db.direct.operator_rows import (
    DRAIN,
    PAUSE,
    RESUME,
    VERBS,
    Ack,
    Command,
    Hold,
    hold_scope,
)
from pandaserver.db.direct.sqlitedirect import typed_rows, utc

# name -> the statement of operator_commands.operator_statements(), compiled for SQLite
SQLITE = {
    "insert_command": (
        'INSERT INTO daemon_command (verb, target, server, reason, requested_by,'
        ' requested_at) VALUES (:verb, :target, :server, :reason, :requested_by,'
        " strftime('%Y-%m-%d %H:%M:%f000', 'now'))"
    ),
    "command": (
        'SELECT daemon_command.id, daemon_command.verb, daemon_command.target,'
        ' daemon_command.server, daemon_command.reason, daemon_command.requested_by,'
        ' daemon_command.requested_at, daemon_command.claimed_by \nFROM daemon_command'
        ' \nWHERE daemon_command.id = :id'
    ),
    "delete_hold": (
        'DELETE FROM daemon_hold WHERE daemon_hold.kind = :kind AND daemon_hold.name ='
        ' :name AND daemon_hold.server = :scope'
    ),
    "delete_holds_everywhere": (
        'DELETE FROM daemon_hold WHERE daemon_hold.kind = :kind AND daemon_hold.name ='
        ' :name'
    ),
    "insert_hold": (
        'INSERT INTO daemon_hold (kind, name, server, command_id, requested_by, reason,'
        ' since) VALUES (:kind, :name, :scope, :command_id, :requested_by, :reason,'
        ' :since)'
    ),
    "acks": (
        'SELECT daemon_command_ack.command_id, daemon_command_ack.server,'
        ' daemon_command_ack.pid, daemon_command_ack.acted_at, daemon_command_ack.note'
        ' \nFROM daemon_command_ack \nWHERE daemon_command_ack.command_id = :command_id'
        ' ORDER BY daemon_command_ack.server'
    ),
    "holds": (
        'SELECT daemon_hold.kind, daemon_hold.name, daemon_hold.server,'
        ' daemon_hold.command_id, daemon_hold.requested_by, daemon_hold.reason,'
        ' daemon_hold.since \nFROM daemon_hold ORDER BY daemon_hold.kind,'
        ' daemon_hold.name, daemon_hold.server'
    ),
    "recent": (
        'SELECT daemon_command.id, daemon_command.verb, daemon_command.target,'
        ' daemon_command.server, daemon_command.reason, daemon_command.requested_by,'
        ' daemon_command.requested_at, daemon_command.claimed_by \nFROM daemon_command'
        ' ORDER BY daemon_command.id DESC\n LIMIT :limit OFFSET :offset'
    ),
    "servers": (
        "SELECT daemon_server.server, daemon_server.last_seen, strftime('%Y-%m-%d"
        " %H:%M:%f000', 'now') AS db_now \nFROM daemon_server ORDER BY"
        ' daemon_server.server'
    ),
}
TIMES = ("requested_at", "since", "acted_at", "last_seen", "db_now")  # UtcDateTime columns


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as SQLAlchemy reads them back (timestamps: aware UTC datetimes)."""
    return {c: utc(v) if c in TIMES else v for c, v in row.items()}


class SqliteControl:
    """The operator's side of the command tables on an open ``sqlite3`` connection (in
    autocommit mode: ``issue`` opens its own transaction)."""

    pushed = False  # SQLite notifies nobody: masters read commands at their next poll

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return typed_rows(self.conn.execute(SQLITE[name], params or {}), TIMES)

    def issue(self, verb: str, target: str, server: str | None, reason: str | None,
              requested_by: str) -> Command:
        """Record a command (and change the holds it changes), in one transaction: the
        rows ``ControlStore.issue`` writes."""
        if verb not in VERBS:
            raise ValueError(f"unknown command {verb!r}: one of {', '.join(VERBS)}")
        conn = self.conn
        conn.execute("BEGIN")
        try:
            new_id = conn.execute(SQLITE["insert_command"], {
                "verb": verb, "target": target, "server": server, "reason": reason,
                "requested_by": requested_by}).lastrowid
            cursor = conn.execute(SQLITE["command"], {"id": new_id})
            columns = [d[0] for d in cursor.description]
            raw = dict(zip(columns, cursor.fetchone(), strict=True))
            scope = hold_scope(verb, target, server)
            if scope is not None:
                kind, where = scope
                conn.execute(SQLITE["delete_hold"], {"kind": kind, "name": target,
                                                     "scope": where})
                if verb == RESUME and server is None:  # resume everywhere lifts every pause
                    conn.execute(SQLITE["delete_holds_everywhere"], {"kind": kind,
                                                                     "name": target})
                if verb in (PAUSE, DRAIN):  # since: the command's time, as stored
                    conn.execute(SQLITE["insert_hold"], {
                        "kind": kind, "name": target, "scope": where, "command_id": new_id,
                        "requested_by": requested_by, "reason": reason,
                        "since": raw["requested_at"]})
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return Command(**_typed(raw))

    def servers(self) -> list[tuple[str, float]]:
        """(server, seconds since its last heartbeat by the database clock), by name."""
        return [(r["server"], (r["db_now"] - r["last_seen"]).total_seconds())
                for r in self._rows("servers")]

    def holds(self) -> list[Hold]:
        return [Hold(**r) for r in self._rows("holds")]

    def acks(self, command_id: int) -> list[Ack]:
        return [Ack(**r) for r in self._rows("acks", {"command_id": command_id})]

    def recent(self, limit: int = 50) -> list[Command]:
        return [Command(**r) for r in self._rows("recent", {"limit": limit, "offset": 0})]

"""Operator commands through the shared database: no RPC, no open port.

``panda-daemon pause`` & co. ``issue`` a row of ``daemon_command`` (who asked, when) and,
for the verbs that stay in force (pause, drain), change ``daemon_hold`` in the same
transaction. Every master ``poll``s now and then, off its loop: in one call it writes the
acknowledgements of what it acted on since the last poll (``daemon_command_ack``: when
this server acted, and what it did), reports its own state (``daemon_server.state``) and
reads the holds that concern it and the commands it has not seen. A ``run-now`` is taken by
one server only (``claim``: a conditional update, so two servers never both run it).

On PostgreSQL ``issue`` also sends ``NOTIFY panda_daemon_command`` (``CHANNEL``) in the
command's own transaction, so the notification leaves only if the row is committed; every
master ``LISTEN``s for it (daemons/fleet/listener.py) and reads at once, instead of waiting
for its next poll. The payload is the command's id; a notification carries no command: the
poll stays the one way commands are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Engine,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.sql import Executable

from pandaserver.db.base import prepared
from pandaserver.db.base.prepared import Prepared
from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import (
    daemon_command,
    daemon_command_ack,
    daemon_hold,
    daemon_lease,
    daemon_server,
)
from pandaserver.db.direct.operator_rows import CHANNEL as CHANNEL
from pandaserver.db.direct.operator_rows import DRAIN as DRAIN
from pandaserver.db.direct.operator_rows import EVERY as EVERY
from pandaserver.db.direct.operator_rows import KILL as KILL
from pandaserver.db.direct.operator_rows import PAUSE as PAUSE
from pandaserver.db.direct.operator_rows import RESTART_WORKERS as RESTART_WORKERS
from pandaserver.db.direct.operator_rows import RESUME as RESUME
from pandaserver.db.direct.operator_rows import RUN_NOW as RUN_NOW
from pandaserver.db.direct.operator_rows import UNDRAIN as UNDRAIN
from pandaserver.db.direct.operator_rows import VERBS as VERBS
from pandaserver.db.direct.operator_rows import Ack as Ack
from pandaserver.db.direct.operator_rows import Command as Command
from pandaserver.db.direct.operator_rows import Hold as Hold
from pandaserver.db.direct.operator_rows import hold_scope


def _param(column: Any, name: str | None = None) -> Any:
    """A bound parameter of ``column``'s type, named after it (or ``name``)."""
    return bindparam(name or column.name, type_=column.type)


def operator_statements() -> dict[str, Executable]:
    """The operator's side, one statement per step, with named bound parameters: run by
    ``ControlStore`` (SQLAlchemy) and, compiled for SQLite and checked in, by
    ``operator_sqlite.SqliteControl`` (``sqlite3``; a unit test keeps the two equal)."""
    t, h, a, s = daemon_command, daemon_hold, daemon_command_ack, daemon_server
    return {
        "insert_command": insert(t).values(
            verb=_param(t.c.verb),
            target=_param(t.c.target),
            server=_param(t.c.server),
            reason=_param(t.c.reason),
            requested_by=_param(t.c.requested_by),
            requested_at=db_now_expr()),
        "command": select(t).where(t.c.id == _param(t.c.id)),
        "delete_hold": delete(h).where(h.c.kind == _param(h.c.kind),
                                       h.c.name == _param(h.c.name),
                                       h.c.server == _param(h.c.server, "scope")),
        "delete_holds_everywhere": delete(h).where(
            h.c.kind == _param(h.c.kind),
            h.c.name == _param(h.c.name)),
        "insert_hold": insert(h).values(
            kind=_param(h.c.kind),
            name=_param(h.c.name),
            server=_param(h.c.server, "scope"),
            command_id=_param(h.c.command_id),
            requested_by=_param(h.c.requested_by),
            reason=_param(h.c.reason),
            since=_param(h.c.since)),
        "acks": select(a).where(a.c.command_id == _param(a.c.command_id)).order_by(a.c.server),
        "holds": select(h).order_by(h.c.kind, h.c.name, h.c.server),
        "recent": select(t).order_by(t.c.id.desc()).limit(bindparam("limit"))
        .offset(bindparam("offset")),
        "servers": select(s.c.server, s.c.last_seen, db_now_expr().label("db_now"))
        .order_by(s.c.server),
    }


STATEMENTS = operator_statements()


@dataclass
class PollResult:
    holds: list[Hold] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    last_id: int = 0


def _read_statement() -> Any:
    """A master's read, one statement (one round trip on PostgreSQL): the holds that concern
    server ``:poll_server`` (rows marked 0, as command-shaped columns) and the commands after
    ``:poll_after`` meant for it (marked 1), the commands in id order."""
    h, t = daemon_hold, daemon_command
    server = bindparam("poll_server", type_=t.c.server.type)
    holds = select(
        literal_column("0").label("hold_row"), h.c.command_id.label("id"),
        h.c.kind.label("verb"), h.c.name.label("target"), h.c.server, h.c.reason,
        h.c.requested_by, h.c.since.label("requested_at"),
        cast(null(), String).label("claimed_by"),
    ).where(or_(and_(h.c.kind == PAUSE, or_(h.c.server == EVERY, h.c.server == server)),
                and_(h.c.kind == DRAIN, h.c.name == server)))
    commands = select(
        literal_column("1"), t.c.id, t.c.verb, t.c.target, t.c.server, t.c.reason,
        t.c.requested_by, t.c.requested_at, t.c.claimed_by,
    ).where(t.c.id > bindparam("poll_after", type_=t.c.id.type),
            or_(t.c.server.is_(None), t.c.server == server))
    both = union_all(holds, commands)
    return both.order_by(both.selected_columns.hold_row, both.selected_columns.id)


class ControlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = Prepared(_read_statement())  # compiled on its first use

    # ----- the operator's side -------------------------------------------------------------
    @property
    def pushed(self) -> bool:
        """Masters hear of a command at once (PostgreSQL's NOTIFY), not at their next poll."""
        return self.engine.dialect.name == "postgresql"

    def issue(self, verb: str, target: str, server: str | None, reason: str | None,
              requested_by: str) -> Command:
        """Record a command (and change the holds it changes), in one transaction."""
        if verb not in VERBS:
            raise ValueError(f"unknown command {verb!r}: one of {', '.join(VERBS)}")
        st = STATEMENTS
        with self.engine.begin() as conn:
            key = conn.execute(st["insert_command"], {
                "verb": verb, "target": target, "server": server, "reason": reason,
                "requested_by": requested_by}).inserted_primary_key
            assert key is not None
            new_id = int(key[0])
            row = conn.execute(st["command"], {"id": new_id}).one()
            scope = hold_scope(verb, target, server)
            if scope is not None:
                kind, where = scope
                conn.execute(st["delete_hold"], {"kind": kind, "name": target, "scope": where})
                if verb == RESUME and server is None:  # resume everywhere lifts every pause
                    conn.execute(st["delete_holds_everywhere"], {"kind": kind, "name": target})
                if verb in (PAUSE, DRAIN):
                    conn.execute(st["insert_hold"], {
                        "kind": kind, "name": target, "scope": where, "command_id": new_id,
                        "requested_by": requested_by, "reason": reason,
                        "since": row.requested_at})
            if conn.dialect.name == "postgresql":  # delivered at commit, with the row
                conn.execute(select(func.pg_notify(CHANNEL, str(new_id))))
        return Command(**row._mapping)

    def servers(self) -> list[tuple[str, float]]:
        """(server, seconds since its last heartbeat by the database clock), by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(STATEMENTS["servers"]).all()
        return [(r.server, (r.db_now - r.last_seen).total_seconds()) for r in rows]

    def command(self, command_id: int) -> Command | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(daemon_command).where(daemon_command.c.id == command_id)
                               ).one_or_none()
        return Command(**row._mapping) if row is not None else None

    def acks(self, command_id: int) -> list[Ack]:
        with self.engine.connect() as conn:
            rows = conn.execute(STATEMENTS["acks"], {"command_id": command_id}).all()
        return [Ack(**row._mapping) for row in rows]

    def holds(self) -> list[Hold]:
        with self.engine.connect() as conn:
            rows = conn.execute(STATEMENTS["holds"]).all()
        return [Hold(**row._mapping) for row in rows]

    def recent(self, limit: int = 50) -> list[Command]:
        with self.engine.connect() as conn:
            rows = conn.execute(STATEMENTS["recent"], {"limit": limit, "offset": 0}).all()
        return [Command(**row._mapping) for row in rows]

    # ----- the master's side ---------------------------------------------------------------
    def poll(self, server: str, pid: int, after_id: int | None,
             acks: list[tuple[int, str]], state: dict[str, Any] | None) -> PollResult:
        """Write ``acks`` (command id, note) and ``state``, then read the holds that concern
        ``server`` and the commands after ``after_id`` meant for it (None: none, only the
        newest id: a master does not act on one-shot commands older than itself).

        The read of every command interval (nothing to write, ``after_id`` known) is one
        statement compiled once and run on the driver on SQLite and PostgreSQL
        (``_read_statement``, ``pandaserver/db/base/prepared.py``): it is most of what an idle
        master costs its database and itself."""
        a, t, h = daemon_command_ack, daemon_command, daemon_hold
        if acks or state is not None:
            with self.engine.begin() as conn:
                if acks:  # only this server writes its acks: no race between read and insert
                    done = set(conn.execute(select(a.c.command_id).where(
                        a.c.server == server, a.c.command_id.in_([i for i, _ in acks])
                    )).scalars())
                    for command_id, note in acks:
                        if command_id not in done:  # not twice, should a poll be retried
                            done.add(command_id)
                            conn.execute(insert(a).values(
                                command_id=command_id, server=server, pid=pid,
                                acted_at=db_now_expr(), note=note))
                if state is not None:
                    conn.execute(update(daemon_server).where(daemon_server.c.server == server)
                                 .values(state=json.dumps(state, sort_keys=True)))
        if after_id is not None and Prepared.supported(self.engine):
            # the read of every command interval: compiled once, one statement (prepared.py)
            with prepared.run(self.engine) as session:
                read = session.rows(self._read, {"poll_server": server, "poll_after": after_id})
            holds = [Hold(kind=r[2], name=r[3], server=r[4], command_id=r[1],
                          requested_by=r[6], reason=r[5], since=r[7]) for r in read if r[0] == 0]
            commands = [Command(*r[1:]) for r in read if r[0] != 0]
            return PollResult(holds, commands, commands[-1].id if commands else after_id)
        with self.engine.connect() as conn:
            holds = [Hold(**row._mapping) for row in conn.execute(select(h).where(or_(
                and_(h.c.kind == PAUSE, h.c.server.in_([EVERY, server])),
                and_(h.c.kind == DRAIN, h.c.name == server)))).all()]
            if after_id is None:
                newest = conn.execute(select(t.c.id).order_by(t.c.id.desc()).limit(1)
                                      ).scalar_one_or_none()
                if Prepared.supported(self.engine):  # compiled now, at the master's first
                    self._read.compiled(self.engine.dialect)  # read, not at its next one
                return PollResult(holds, [], int(newest or 0))
            rows = conn.execute(select(t).where(
                t.c.id > after_id, or_(t.c.server.is_(None), t.c.server == server))
                .order_by(t.c.id)).all()
            commands = [Command(**row._mapping) for row in rows]
            return PollResult(holds, commands, commands[-1].id if commands else after_id)

    def claim(self, command_id: int, server: str, lease_name: str | None) -> str | None:
        """Take a run-now for ``server``; returns who has it (``server`` when taken here).
        For a sync script the lease is made due at once, so the grant is not refused."""
        t = daemon_command
        with self.engine.begin() as conn:
            taken = conn.execute(update(t).where(t.c.id == command_id, t.c.claimed_by.is_(None))
                                 .values(claimed_by=server)).rowcount == 1
            if taken and lease_name is not None:
                conn.execute(update(daemon_lease).where(daemon_lease.c.name == lease_name)
                             .values(next_due=db_now_expr()))
            holder = conn.execute(select(t.c.claimed_by).where(t.c.id == command_id)
                                  ).scalar_one_or_none()
        return str(holder) if holder is not None else None

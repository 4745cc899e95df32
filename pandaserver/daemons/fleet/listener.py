"""PostgreSQL pushes the operators' commands: a connection that ``LISTEN``s, watched by the loop.

``panda-daemon pause`` & co. send ``NOTIFY panda_daemon_command`` in the transaction that
records the command (``pandaserver/db/stores/operator_commands.py``). Each master of a PostgreSQL
fleet keeps one connection of its own that ``LISTEN``s on that channel:

- it is opened on the ``house`` lane (connecting may block; the loop never does), taken out
  of the engine's pool for good (``detach``), with the engine's connect arguments (timeouts,
  TCP keepalives: a dead server or a cut path ends it within seconds, in the kernel, with
  no wake-up of ours);
- its socket is one more descriptor of the loop's single wait: readable means a
  notification arrived, or the connection ended. ``read`` then takes what arrived
  (``poll()``, which never blocks) and sets ``woken``: the controls read the commands now;
- a connection that ended is closed and opened again on the lane; once it listens again,
  ``woken`` is set too, because a notification sent while nobody listened is lost and only
  a read finds its command.

A notification only says "read now"; the read itself stays the one way commands arrive
(``Controls``), and the controls still read now and then (``command_interval``, a safety
net) should a notification be lost another way. Other backends have no listener: their
masters poll.

The same connection also ``LISTEN``s on ``panda_daemon_grant`` when the master watches
grants (``grants``, a ``GrantWatch``: every lease grant statement notifies it, and a
fallback server that heard the grant of the period it looks at skips its lease-table read,
grantwatch.py). Those notifications do not wake the controls; the watch is told when
listening begins and ends, so it never counts on a grant sent while nobody listened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

from sqlalchemy import Engine

from pandaserver.daemons.fleet.grantwatch import GrantWatch
from pandaserver.db.stores.leasefirings import GRANT_CHANNEL
from pandaserver.db.stores.operator_commands import CHANNEL

log = logging.getLogger("panda.master")


def _at_end(fd: int) -> bool:
    """Whether the peer closed the socket (what is left to read is its end). The driver may
    take a server's last words (a FATAL: terminated) without failing; the socket then stays
    readable, and the loop's wait would spin on it."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        sock.close()


class CommandListener:
    """One master's ``LISTEN`` connection; every method but ``open`` runs on the loop."""

    def __init__(self, engine: Engine, retry_after: float) -> None:
        self.engine = engine
        self.retry_after = retry_after
        self._raw: Any = None  # the pool's detached connection (closing it closes the socket)
        self.conn: Any = None  # its psycopg2 connection, while it listens
        self.connecting = False
        self.next_try = 0.0
        self.woken = False  # a notification arrived, or listening began: read the commands
        self.generation = 0  # bumped by each new connection (its descriptor may be reused)
        self.notified = 0
        self.lost = 0
        self.grants: GrantWatch | None = None  # set before the first open: grants heard too
        self._grants_listened = False  # the last ``open`` listened for grants (lane thread)

    @staticmethod
    def supported(engine: Engine) -> bool:
        return engine.dialect.name == "postgresql"

    # ----- the lane's side ----------------------------------------------------------------
    def open(self) -> Any:
        """Connect and ``LISTEN`` (on a lane thread); the detached pool connection."""
        raw = self.engine.raw_connection()
        try:
            raw.detach()  # never handed back to the pool: it is this listener's alone
            dbapi: Any = raw.dbapi_connection  # psycopg2's
            grants = self.grants is not None
            with dbapi.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}; LISTEN {GRANT_CHANNEL}" if grants
                               else f"LISTEN {CHANNEL}")
            self._grants_listened = grants
            if not dbapi.autocommit:
                dbapi.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                raw.close()
            raise
        return raw

    # ----- the loop's side ----------------------------------------------------------------
    def wanted(self, now: float) -> bool:
        """Whether a connection should be opened now."""
        return self.conn is None and not self.connecting and now >= self.next_try

    def opened(self, raw: Any, error: BaseException | None, late: bool, now: float) -> None:
        """The lane's answer to ``open``."""
        self.connecting = False
        if late or error is not None or raw is None:
            if raw is not None:
                with contextlib.suppress(Exception):
                    raw.close()
            self.next_try = now + self.retry_after
            if error is not None:
                log.debug("listening for operator commands failed: %s", error)
            return
        self._raw = raw
        self.conn = raw.dbapi_connection
        self.generation += 1
        self.woken = True  # commands recorded while nobody listened are found by a read
        if self.grants is not None and self._grants_listened:  # grants from now on are heard
            self.grants.listening(now)
        elif self.grants is not None:  # the watch began while this one connected: again
            self.close()
            self.next_try = now
            return
        log.debug("listening for operator commands (%s)", CHANNEL)

    def fileno(self) -> int | None:
        if self.conn is None:
            return None
        try:
            return int(self.conn.fileno())
        except Exception:
            return None

    def read(self, now: float) -> None:
        """The socket is readable: take the notifications, or notice the end of the
        connection (never blocks: ``poll`` reads only what has arrived)."""
        if self.conn is None:
            return
        try:
            self.conn.poll()
            ended = bool(self.conn.closed) or _at_end(self.conn.fileno())
        except Exception as exc:
            ended = True
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        else:
            why = "closed by the server"
        if ended:
            log.info("listening for operator commands ended (%s): listening again; the"
                     " commands recorded meanwhile are read then", why)
            self.lost += 1
            self.close()
            self.next_try = now  # opened again on the next turn
            return
        if self.conn.notifies:
            for notice in self.conn.notifies:
                if notice.channel == GRANT_CHANNEL:
                    if self.grants is not None:
                        self.grants.take(notice.payload, now)
                else:  # the payload is the id: the read takes them all
                    self.notified += 1
                    self.woken = True
            del self.conn.notifies[:]

    def watch_grants(self, watch: GrantWatch, now: float) -> None:
        """Hear the lease grants from now on (the first fallback look asks): a connection
        that listens already is opened again, now listening on both channels."""
        self.grants = watch
        if self.conn is not None:
            self.close()
            self.next_try = now

    def take_wake(self) -> bool:
        woken, self.woken = self.woken, False
        return woken

    def close(self) -> None:
        if self.grants is not None:
            self.grants.deaf()
        raw, self._raw, self.conn = self._raw, None, None
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.close()

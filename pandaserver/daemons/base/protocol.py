"""Messages between the master and a worker: one JSON object per message on a private pipe.

master -> worker: ``init`` (package, modules to import), ``run`` (one assignment), ``exit``.
worker -> master: ``ready`` (pid, import errors), ``done`` (outcome, error, and the monotonic
times main() was first called and last returned: one message per run keeps the master's
wake-ups to one per run).
"""

from __future__ import annotations

import json
from multiprocessing.connection import Connection
from typing import Any

OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
LOST = "lost"
SKIPPED = "skipped"
FENCED = "fenced"  # killed by the master or its worker: the lease could not be renewed in time
KILLED = "killed"  # killed by an operator (panda-daemon kill)


class ProtocolError(Exception):
    pass


def send(conn: Connection, op: str, **fields: Any) -> None:
    conn.send_bytes(json.dumps({"op": op, **fields}).encode())


def recv(conn: Connection) -> dict[str, Any]:
    """One message; EOFError when the other side is gone."""
    raw = conn.recv_bytes()
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"unreadable message: {raw[:200]!r}") from exc
    if not isinstance(message, dict) or "op" not in message:
        raise ProtocolError(f"message without op: {raw[:200]!r}")
    return message

"""Where panda-daemon keeps its state on this host: the default SQLite file, the masters'
status files, the history spool.

A module of its own, without SQLAlchemy, so that commands which only read this host's
files (``status``) find the directory without importing the database layer;
``pandaserver.db.base.engine`` re-exports what it names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STATE_DIR_ENV = "PANDA_DAEMON_STATE_DIR"
SYSTEM_STATE_DIR = Path("/var/lib/panda-daemon")
USER_STATE_DIR = Path("~/.local/state/panda-daemon")
SQLITE_FILENAME = "panda_daemon.sqlite"


def default_state_dir(environ: Mapping[str, str] | None = None,
                      system: Path = SYSTEM_STATE_DIR) -> Path:
    """Where the default SQLite file lives.

    ``$PANDA_DAEMON_STATE_DIR`` if set; else ``system`` (``/var/lib/panda-daemon``) when it
    is (or could be created) writable; else ``~/.local/state/panda-daemon``.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(STATE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    if _writable(system):
        return system
    home = env.get("HOME")
    if home:
        return Path(home) / ".local" / "state" / "panda-daemon"
    return USER_STATE_DIR.expanduser()


def _writable(path: Path) -> bool:
    if path.exists():
        return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    parent = path.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


SQLITE_ELSEWHERE = (f"choose another place: {STATE_DIR_ENV}=DIR in the environment (a"
                    " directory this user can write), or [daemon] db_url ="
                    " sqlite:////DIR/panda_daemon.sqlite")


def sqlite_unusable(database: str, note: str = "") -> str | None:
    """Why the SQLite file ``database`` can be neither opened nor created by this user (a
    line naming the path, ``note`` on where it comes from, and how to choose another), or
    None when it looks usable."""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    if path.exists():
        return None
    missing, parent = path, path.parent
    while not parent.exists() and parent != parent.parent:
        missing, parent = parent, parent.parent
    if not parent.is_dir():
        why = f"{parent} is not a directory"
    elif not os.access(parent, os.W_OK | os.X_OK):
        why = f"this user (uid {os.geteuid()}) cannot create {missing} in {parent}"
    else:
        return None
    return f"the SQLite database {path}{note} cannot be created: {why}; {SQLITE_ELSEWHERE}"

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

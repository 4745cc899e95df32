"""Who the master runs as.

Started as root, the master switches to ``uname``/``gname`` of ``[daemon]`` (with the
user's supplementary groups, as a login would) before it starts any worker, so no script
ever runs as root. ``PANDA_NO_ROOT`` in the environment skips the switch, as in the
original daemon: the master then runs as whoever started it.

Started as another user, there is nothing to switch: the master runs as that user.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from pathlib import Path

from pandaserver.config.users import (  # resolved from the config; switched to here
    NO_ROOT_VARIABLE,
    PrivilegeError,
    ServiceUser,
    resolve_user,
)

__all__ = ["NO_ROOT_VARIABLE", "PrivilegeError", "ServiceUser", "drop_privileges",
           "prepare_directory", "resolve_user"]

log = logging.getLogger("panda.service")

def drop_privileges(user: ServiceUser) -> None:
    """Become ``user`` for good: supplementary groups, group, then user (in that order)."""
    try:
        os.initgroups(user.name, user.gid)
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {user}: {exc.strerror}") from exc
    if os.getuid() != user.uid or os.geteuid() != user.uid or os.getegid() != user.gid:
        raise PrivilegeError(f"switching to {user} did not take effect")
    try:  # the switch must be irreversible
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError(f"after switching to {user} the process could become root again")
    os.environ.update(USER=user.name, LOGNAME=user.name, HOME=user.home)
    log.debug("running as %s", user)
    _check_interpreter(user)


def _check_interpreter(user: ServiceUser) -> None:
    """Workers are fresh interpreters started as ``user``: it must be able to run Python and
    read its library (a virtualenv made from a Python under /root cannot be)."""
    executable = os.path.realpath(sys.executable)
    library = os.path.dirname(os.__file__)
    if not os.access(executable, os.X_OK) or not os.access(library, os.R_OK | os.X_OK):
        raise PrivilegeError(
            f"user {user.name} cannot run the Python interpreter {executable} or read its"
            f" library {library}: install panda-daemon where {user.name} can read it")


def prepare_directory(path: Path, user: ServiceUser | None) -> None:
    """Create ``path`` (and its parents) if missing; a directory created for a service user
    is given to that user, so the master can write its pid and log files after the switch.
    Existing directories are left as they are."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o755)  # whatever the umask, the service user can reach it
    if user is not None and missing:
        os.chown(path, user.uid, user.gid)


def describe_current_user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"

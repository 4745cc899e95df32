"""The service user and group a config names: do they exist, and may they be used.

Checked by the validation of every command (``pandaserver.preflight.validate``) and used by
the service commands to switch users (``pandaserver.service.privileges``).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass

NO_ROOT_VARIABLE = "PANDA_NO_ROOT"


class PrivilegeError(Exception):
    """The service user or group cannot be used; the message says what to change."""


@dataclass(frozen=True)
class ServiceUser:
    """The account the master switches to."""

    name: str
    uid: int
    gid: int
    group: str
    home: str

    def __str__(self) -> str:
        return f"{self.name}:{self.group} (uid {self.uid}, gid {self.gid})"


def resolve_user(uname: str, gname: str, where: str, *, euid: int | None = None,
                 environ: Mapping[str, str] | None = None) -> ServiceUser | None:
    """The user to switch to, or None when no switch applies (not root, or PANDA_NO_ROOT).

    ``where`` names the config file for messages. Raises ``PrivilegeError``.
    """
    env = os.environ if environ is None else environ
    if NO_ROOT_VARIABLE in env:
        return None
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    if not uname:
        raise PrivilegeError(
            f"started as root, but uname is not set in [daemon] of {where}: set uname (and"
            f" gname) to the account the scripts run as, or set {NO_ROOT_VARIABLE}=1 in the"
            " environment to run them as root")
    try:
        entry = pwd.getpwnam(uname)
    except KeyError:
        raise PrivilegeError(
            f"user {uname!r} (uname in [daemon] of {where}) does not exist on this host:"
            " create it or set uname to an existing user") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(
            f"uname {uname!r} in [daemon] of {where} is root: scripts never run as root unless"
            f" {NO_ROOT_VARIABLE}=1 is set in the environment")
    if gname:
        try:
            group = grp.getgrnam(gname)
        except KeyError:
            raise PrivilegeError(
                f"group {gname!r} (gname in [daemon] of {where}) does not exist on this host:"
                " create it or set gname to an existing group") from None
        gid, group_name = group.gr_gid, group.gr_name
    else:
        gid = entry.pw_gid
        try:
            group_name = grp.getgrgid(gid).gr_name
        except KeyError:
            group_name = str(gid)
    return ServiceUser(name=entry.pw_name, uid=entry.pw_uid, gid=gid, group=group_name,
                       home=entry.pw_dir)

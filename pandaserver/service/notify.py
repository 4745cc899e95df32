"""systemd's readiness protocol (``Type=notify``) without a library: one datagram to the
socket named by ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket


def sd_notify(message: str, *, unset_environment: bool = False) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd.

    With ``unset_environment`` the variable is removed so that workers and scripts do not
    inherit it (only the main process may notify).
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError:
            return False
    return True

"""How a command says a problem: one line on stderr, ``panda-daemon: <message>``."""

from __future__ import annotations

import sys


def err(message: str) -> None:
    sys.stderr.write(f"panda-daemon: {message}\n")

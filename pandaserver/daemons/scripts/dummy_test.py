"""A script that only shows it ran: prints its argv, pid and whether it got a tbuf."""

from __future__ import annotations

import math
import os
from typing import Any


def main(argv: tuple[Any, ...] = (), tbuf: Any = None, **kwargs: Any) -> None:
    print("Dummy test of PanDA daemon ---- START")
    print(f"cos(pi/3) = {math.cos(math.pi / 3):.3f}")
    print(f"argv={list(argv)} uid={os.getuid()} pid={os.getpid()}")
    context = getattr(tbuf, "context", None)
    print(f"got tbuf: {tbuf is not None}; run context: {context}")
    print("Dummy test of PanDA daemon ---- END")

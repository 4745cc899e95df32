"""Writes its own start (name and system-wide monotonic time) to $PANDA_BENCH_PROBE:
the benchmark measures intervals and delays as the script sees them."""

from __future__ import annotations

import os
import time
from typing import Any


def main(argv: tuple[Any, ...] = (), **_: Any) -> None:
    now = time.monotonic()
    line = f"{argv[0] if argv else '?'} {now:.6f}\n".encode()
    fd = os.open(os.environ["PANDA_BENCH_PROBE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write to an O_APPEND file: lines never interleave
    finally:
        os.close(fd)

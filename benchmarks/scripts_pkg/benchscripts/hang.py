"""Writes its start (the argument, the monotonic time and its pid) to $PANDA_BENCH_PROBE,
then hangs, ignoring SIGTERM: only the SIGKILL of its timeout ends it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def main(argv: tuple[Any, ...] = (), **_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    line = f"{argv[0] if argv else '?'} {time.monotonic():.6f} {os.getpid()}\n".encode()
    fd = os.open(os.environ["PANDA_BENCH_PROBE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    while True:
        time.sleep(3600)

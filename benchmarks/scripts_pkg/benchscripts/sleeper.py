"""Starts a child that sleeps, then sleeps itself; with "stubborn" both ignore SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any


def main(argv: tuple[Any, ...] = (), **_: Any) -> None:
    stubborn = "stubborn" in argv[1:]
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.Popen(["sleep", "1000"],
                     preexec_fn=(lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
                     if stubborn else None)
    while True:
        time.sleep(3600)

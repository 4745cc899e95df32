"""Does nothing: the benchmark measures the daemon, not the script."""

from __future__ import annotations

from typing import Any


def main(**_: Any) -> None:
    return None

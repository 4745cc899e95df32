"""A loop-mode example: does one small batch per call, returns True while work remains.

In loop mode the daemon calls ``main()`` again while it returns a true value, until it
returns a false value or the script's period has passed since the loop started.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_BATCHES_PER_LOOP = 3
_state = {"calls": 0}


def main(argv: tuple[Any, ...] = (), tbuf: Any = None, lock_pool: Any = None, **_: Any) -> bool:
    _state["calls"] += 1
    batch = _state["calls"]
    with lock_pool.lock("dummy_loop") if lock_pool is not None else _null():
        log.info("processing batch %d", batch)
    more = batch % _BATCHES_PER_LOOP != 0
    return more


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

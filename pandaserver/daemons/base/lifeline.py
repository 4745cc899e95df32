"""The lifeline between a master and each worker: its wire format and the kill grace.

The master holds the only write end of a worker's lifeline pipe; end-of-file there means the
master is gone. While a sync run holds a lease the master writes the run's hard deadline
(``RECORD``: 8 bytes, a float on the shared monotonic clock, ``inf`` for none), again after
every confirmed renewal. Master and worker both count ``KILL_GRACE`` between the SIGTERM and
the SIGKILL of what a run started, so it lives here, in what both may import.
"""

from __future__ import annotations

import math
import struct

KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of a run's processes
RECORD = struct.Struct("<d")


def encode_deadline(deadline: float | None) -> bytes:
    return RECORD.pack(math.inf if deadline is None else deadline)

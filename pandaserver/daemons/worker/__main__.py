"""``python -m pandaserver.daemons.worker``: the worker process the master spawns."""

from __future__ import annotations

import sys

from pandaserver.daemons.worker.process import main

if __name__ == "__main__":
    sys.exit(main())

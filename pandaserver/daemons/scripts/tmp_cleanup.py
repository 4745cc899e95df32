"""Delete files older than N days from a directory (a typical housekeeping script).

Arguments: ``DIRECTORY [DAYS]`` (default 7 days). Missing directory: nothing to do.
Run as a ``sync`` script when the directory is on storage shared by the fleet.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def main(argv: tuple[Any, ...] = (), **_: Any) -> None:
    if len(argv) < 2:
        raise ValueError("tmp_cleanup needs arguments: [DIRECTORY, DAYS]")
    directory = Path(os.path.expandvars(str(argv[1]))).expanduser()
    days = float(argv[2]) if len(argv) > 2 else 7.0
    if not directory.is_dir():
        log.info("%s does not exist; nothing to clean", directory)
        return
    cutoff = time.time() - days * 86400
    removed = 0
    for path in directory.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)
    log.info("removed %d file(s) older than %g days from %s", removed, days, directory)

"""Report how the scripts ran lately, from the run history, through PanDA's
``tbuf.querySQLS`` (an example of a script's SQL: PanDA's bind variables, and Oracle's
``SYSDATE - :days`` rewritten for the database in use; docs/database.md, "SQL from
scripts").

Arguments: ``[HOURS]`` (default 24). Configure it as, for instance,
``"history_report": {"period": 3600, "arguments": ["24"]}``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

SQL = """
SELECT script, outcome, COUNT(*)
  FROM daemon_run
 WHERE started_at > SYSDATE - :days
 GROUP BY script, outcome
 ORDER BY script, outcome
"""


def main(argv: tuple[Any, ...] = (), tbuf: Any = None, **_: Any) -> None:
    hours = float(argv[1]) if len(argv) > 1 else 24.0
    if tbuf is None or not hasattr(tbuf, "querySQLS"):
        raise RuntimeError("history_report needs the database: run it under a master with"
                           " a configuration file")
    status, rows = tbuf.querySQLS(SQL, {":days": hours / 24.0})
    if status == -1 or rows is None:
        raise RuntimeError("the run history could not be read (the error is logged above)")
    if not rows:
        log.info("no runs in the last %g hours", hours)
        return
    counts: dict[str, list[str]] = {}
    for script, outcome, count in rows:
        counts.setdefault(script, []).append(f"{outcome} {count}")
    for script, outcomes in counts.items():
        log.info("last %g hours: %s: %s", hours, script, ", ".join(outcomes))

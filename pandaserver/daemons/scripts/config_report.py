"""Read a value of PanDA's configuration table with ``tbuf.getConfigValue`` (an example:
the value is set with ``panda-daemon config-value set COMPONENT KEY VALUE --type TYPE``;
docs/database.md, "SQL from scripts").

Arguments: ``[COMPONENT KEY [DEFAULT]]`` (default ``config_report MESSAGE``). The value is
logged with its type; without a row (or a table) the script gets the default.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def main(argv: tuple[Any, ...] = (), tbuf: Any = None, **_: Any) -> None:
    component = str(argv[1]) if len(argv) > 1 else "config_report"
    key = str(argv[2]) if len(argv) > 2 else "MESSAGE"
    default = argv[3] if len(argv) > 3 else "no value set"
    if tbuf is None or not hasattr(tbuf, "getConfigValue"):
        raise RuntimeError("config_report needs the database: run it under a master with"
                           " a configuration file")
    value = tbuf.getConfigValue(component, key, default=default)
    log.info("%s %s = %r (%s)", component, key, value, type(value).__name__)

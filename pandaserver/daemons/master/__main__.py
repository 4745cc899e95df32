"""``python -m pandaserver.daemons.master`` is ``panda-daemon``: an entry point, not a dependency.

The one import from the daemon up into the command layer, listed openly in the import-linter
contracts (pyproject.toml): nothing else under ``pandaserver.daemons`` imports the commands.
"""

from __future__ import annotations

import sys

from pandaserver.commands.main import main

if __name__ == "__main__":
    sys.exit(main())

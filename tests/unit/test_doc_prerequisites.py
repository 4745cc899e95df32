"""README.md and docs/quickstart.md name every system package tests/run-all.sh installs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# how the docs name each apt package of tests/run-all.sh
SHOWN_AS = {"postgresql": "PostgreSQL", "mariadb-server": "MariaDB", "chromium": "Chromium",
            "logrotate": "logrotate", "faketime": "faketime", "prometheus": "prometheus"}


def test_readme_and_quickstart_list_the_packages_run_all_installs() -> None:
    script = (REPO / "tests" / "run-all.sh").read_text()
    packages = re.findall(r'missing="\$missing ([\w.+-]+)"', script)
    assert packages and set(packages) <= set(SHOWN_AS), (
        f"name the new package(s) {sorted(set(packages) - set(SHOWN_AS))} in README.md and"
        " docs/quickstart.md, and here")
    for doc in ("README.md", "docs/quickstart.md"):
        text = " ".join((REPO / doc).read_text().split())
        missing = [p for p in packages if SHOWN_AS[p] not in text]
        assert not missing, f"{doc} does not name {missing} among the test prerequisites"

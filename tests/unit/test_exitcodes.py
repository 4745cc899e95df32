"""The one exit-code table: one meaning per code, every code documented, no other table
in the command layer (the real commands are run in tests/acceptance/test_exit_codes.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pandaserver import exitcodes

REPO = Path(__file__).resolve().parents[2]
# status's LSB "dead, pid file left" shares RET_FAILED's value on purpose
LSB_ALIASES = {"RET_STALE_PIDFILE"}
COMMAND_LAYER = ("commands", "preflight", "service")


def _table(prefix: str) -> dict[str, int]:
    return {name: value for name, value in vars(exitcodes).items()
            if name.startswith(prefix) and isinstance(value, int)}


def test_each_code_has_one_name() -> None:
    codes = {name: value for name, value in _table("RET_").items() if name not in LSB_ALIASES}
    by_value: dict[int, list[str]] = {}
    for name, value in codes.items():
        by_value.setdefault(value, []).append(name)
    assert {v: n for v, n in by_value.items() if len(n) > 1} == {}
    assert sorted(by_value) == list(range(len(by_value))), "the codes leave a gap"
    assert exitcodes.RET_STALE_PIDFILE == 1 and exitcodes.RET_NOT_RUNNING == 3  # LSB status
    assert _table("CHECK_") == {"CHECK_OK": 0, "CHECK_WARNING": 1, "CHECK_CRITICAL": 2,
                                "CHECK_UNKNOWN": 3}  # the monitoring-plugin convention


def test_docs_reference_lists_every_code_with_its_name() -> None:
    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    section = text.split("## Exit statuses", 1)[1].split("\n### ", 1)[0]
    rows = {name: int(code) for code, name in
            re.findall(r"^\| (\d+) \| `(RET_\w+)` \|", section, re.MULTILINE)}
    expected = {name: value for name, value in _table("RET_").items()
                if name not in LSB_ALIASES}
    assert rows == expected


def _constants_and_literal_returns(path: Path) -> list[str]:
    """Module-level ``EXIT_*``/``RET_*``/``CHECK_*`` assignments, and ``return <int>``."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        found += [f"{path.name}:{node.lineno} defines {name}" for name in names
                  if re.match(r"(EXIT|RET|CHECK)_[A-Z_]+$", name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) \
                and type(node.value.value) is int:
            found.append(f"{path.name}:{node.lineno} returns {node.value.value}")
    return found


def test_the_command_layer_has_no_table_of_its_own() -> None:
    package = REPO / "pandaserver"
    offenders = [hit for layer in COMMAND_LAYER for path in sorted((package / layer).glob("*.py"))
                 for hit in _constants_and_literal_returns(path)]
    assert offenders == []


def test_history_lost_has_its_own_code() -> None:
    # the master's stop lost history (no database, no writable spool): said by the status
    assert exitcodes.RET_HISTORY_LOST == 11

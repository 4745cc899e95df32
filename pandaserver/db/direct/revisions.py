"""The schema revisions this code knows, read from the migration files without Alembic.

A master checks at start that the database's schema is this code's head, and so does every
command on the database; Alembic's own revision map imports Alembic and every migration
module (tens of milliseconds) for two strings. This reads each file's top-level
``revision = "..."`` and ``down_revision = ...`` instead (``ast``: nothing is imported), and
Alembic is imported only when a migration runs (``pandaserver.db.base.schema.upgrade``).
``tests/unit/test_revisions.py`` checks that the two agree.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

VERSIONS_DIR = Path(__file__).resolve().parent.parent / "migrations" / "versions"


def _assigned(tree: ast.Module, name: str) -> tuple[bool, object]:
    """Whether the module assigns ``name`` at its top level, and the literal assigned."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True, ast.literal_eval(value)
    return False, None


@lru_cache(maxsize=4)
def revision_map(directory: Path = VERSIONS_DIR) -> dict[str, tuple[str, ...]]:
    """Each revision of ``directory``, with the revisions it follows (none: the first)."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found, revision = _assigned(tree, "revision")
        if not found:
            continue
        _, down = _assigned(tree, "down_revision")
        if not isinstance(revision, str) or revision in revisions:
            raise RuntimeError(f"{path}: revision must be a string given once, got: {revision!r}")
        if down is None:
            revisions[revision] = ()
        elif isinstance(down, str):
            revisions[revision] = (down,)
        elif isinstance(down, tuple | list):
            revisions[revision] = tuple(str(d) for d in down)
        else:
            raise RuntimeError(f"{path}: down_revision must be a string, a tuple or None,"
                               f" got: {down!r}")
    return revisions


def heads(directory: Path = VERSIONS_DIR) -> list[str]:
    """The revisions no other follows."""
    revisions = revision_map(directory)
    followed = {down for downs in revisions.values() for down in downs}
    return sorted(set(revisions) - followed)


def head(directory: Path = VERSIONS_DIR) -> str:
    """The one newest revision (several heads or none: a broken set of migrations)."""
    found = heads(directory)
    if len(found) != 1:
        raise RuntimeError(f"the migrations in {directory} must have one head, found:"
                           f" {', '.join(found) or 'none'}")
    return found[0]


def walk(directory: Path = VERSIONS_DIR) -> list[str]:
    """Every revision, the head first and the first revision last (as Alembic walks them)."""
    revisions = revision_map(directory)
    order: list[str] = []
    pending = heads(directory)
    seen: set[str] = set()
    while pending:
        revision = pending.pop(0)
        if revision in seen or revision not in revisions:
            continue
        seen.add(revision)
        order.append(revision)
        pending.extend(revisions[revision])
    return order

"""The schema revisions read from the migration files without Alembic
(``pandaserver.db.direct.revisions``) are Alembic's own: the same head, the same walk."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from pandaserver.db.base import schema
from pandaserver.db.direct import revisions


def test_the_files_read_give_alembics_head_and_walk() -> None:
    scripts = ScriptDirectory.from_config(schema._config())
    assert schema.head_revision() == scripts.get_current_head()
    assert schema.known_revisions() == [s.revision for s in scripts.walk_revisions()]


def _migration(directory: Path, name: str, revision: str, down: str | None) -> None:
    (directory / f"{name}.py").write_text(
        f'"""{name}"""\nrevision = {revision!r}\ndown_revision: str | None = {down!r}\n',
        encoding="utf-8")


def test_two_heads_are_refused_with_both_named(tmp_path: Path) -> None:
    _migration(tmp_path, "a", "0001", None)
    _migration(tmp_path, "b", "0002", "0001")
    _migration(tmp_path, "c", "0003", "0001")
    (tmp_path / "__init__.py").write_text("revision = 'not a migration'\n", encoding="utf-8")
    assert revisions.walk(tmp_path) == ["0002", "0003", "0001"]
    with pytest.raises(RuntimeError, match="one head, found: 0002, 0003"):
        revisions.head(tmp_path)

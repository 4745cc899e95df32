"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from pandaserver.db.base.schema import upgrade


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file of its own, migrated to this code's schema."""
    engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()

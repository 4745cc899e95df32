"""Alembic migrations of panda-daemon's tables, run by ``pandaserver.db.base.schema``."""

"""Which code works with each schema revision: ``daemon_schema_compat`` (rolling upgrades).

One row per revision that ``panda-daemon db upgrade`` reached, written in the migration's
transaction: ``oldest_code``, the oldest code revision that works with it (the newest
contract migration up to it, else the first revision), ``recorded_at`` (database clock),
``recorded_by`` (panda-daemon version and host). A release that finds a schema newer than
it knows reads this row, by name, and runs on it when it knows ``oldest_code``
(docs/database.md, "Rolling upgrades").

Locks: none on existing tables (a new table only); safe while the fleet runs.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0012"
down_revision: str | None = "0011"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a new table: code of every earlier revision ignores it


def upgrade() -> None:
    op.create_table(
        "daemon_schema_compat",
        sa.Column("revision", sa.String(32), nullable=False),
        sa.Column("oldest_code", sa.String(32), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.Column("recorded_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("revision", name="pk_daemon_schema_compat"),
    )


def downgrade() -> None:
    op.drop_table("daemon_schema_compat")

"""When each history of the database server was first seen: ``daemon_db_timeline``.

One row per (``system_id``, ``timeline``) a master of the fleet reached (PostgreSQL's
system identifier and timeline, ``pandaserver/db/base/serverid.py``): ``first_seen`` (database
clock) and ``seen_by``. Written on the server it names, so a promoted standby's row is the
first master's arrival there, whatever the standby missed of its old primary; a master that
starts after a failover reads it to know whether leases granted on the old primary may
still be running (docs/database.md, "Failover of the database").

Locks: none on existing tables (a new table only); safe while the fleet runs.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0013"
down_revision: str | None = "0012"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a new table: code of every earlier revision ignores it


def upgrade() -> None:
    op.create_table(
        "daemon_db_timeline",
        sa.Column("system_id", sa.String(128), nullable=False),
        sa.Column("timeline", sa.Integer(), nullable=False),
        sa.Column("first_seen", UtcDateTime(), nullable=False),
        sa.Column("seen_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("system_id", "timeline", name="pk_daemon_db_timeline"),
    )


def downgrade() -> None:
    op.drop_table("daemon_db_timeline")

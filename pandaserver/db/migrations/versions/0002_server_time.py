"""The master's own wall clock at each heartbeat (``daemon_server.server_time``).

With ``last_seen`` (the database clock at the same beat) it gives each server's clock
offset to the database, shown by ``panda-daemon fleet`` and the web pages. Nullable: a
master of an older panda-daemon leaves it empty.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a nullable column: older code leaves it empty


def upgrade() -> None:
    op.add_column("daemon_server", sa.Column("server_time", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_server") as batch:
        batch.drop_column("server_time")

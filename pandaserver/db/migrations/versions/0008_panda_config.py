"""PanDA's CONFIG table, as ``panda_config``: the values ``tbuf.getConfigValue`` reads and
``panda-daemon config-value`` manages (app, component, key, vo, value, value_json, type,
descr as in PanDA; who changed a row last, and when). Additive: a new table only.

Locks: none on existing tables (a new table only); safe while the fleet runs.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0008"
down_revision: str | None = "0007"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a new table: code of every earlier revision ignores it


def upgrade() -> None:
    op.create_table(
        "panda_config",
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("component", sa.String(64), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("vo", sa.String(32), nullable=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("value_json", sa.Text(), nullable=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("descr", sa.Text(), nullable=True),
        sa.Column("modified_by", sa.String(255), nullable=True),
        sa.Column("modified_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("app", "component", "key", name="pk_panda_config"),
    )


def downgrade() -> None:
    op.drop_table("panda_config")

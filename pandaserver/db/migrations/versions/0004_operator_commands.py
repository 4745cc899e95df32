"""Operator commands through the shared database (``pause``, ``resume``, ``run-now``,
``kill``, ``drain``, ``undrain``, ``restart-workers``): ``daemon_command`` (one row per
command, who asked and when), ``daemon_command_ack`` (when each server acted),
``daemon_hold`` (the pauses and drains in force) and ``daemon_server.state`` (what each
master reports of itself: draining, crash-looping scripts).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # new tables and a nullable column: older code ignores them

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "daemon_command",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("verb", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_daemon_command"),
    )
    op.create_table(
        "daemon_command_ack",
        sa.Column("command_id", sa.BigInteger(), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acted_at", UtcDateTime(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("command_id", "server", name="pk_daemon_command_ack"),
    )
    op.create_table(
        "daemon_hold",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("command_id", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("since", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", "server", name="pk_daemon_hold"),
    )
    op.add_column("daemon_server", sa.Column("state", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_server") as batch:
        batch.drop_column("state")
    op.drop_table("daemon_hold")
    op.drop_table("daemon_command_ack")
    op.drop_table("daemon_command")

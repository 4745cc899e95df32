"""The first schema: leases, run history, server heartbeats, PanDA process locks.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # the first schema: nothing older to keep working


def upgrade() -> None:
    op.create_table(
        "daemon_lease",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("owner_server", sa.String(255), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=True),
        sa.Column("acquired_at", UtcDateTime(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("next_due", UtcDateTime(), nullable=False),
        sa.Column("period", sa.Float(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_daemon_lease"),
    )
    op.create_table(
        "daemon_run",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("script", sa.String(128), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=True),
        sa.Column("due_at", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_daemon_run"),
    )
    op.create_index("ix_daemon_run_script_started_at", "daemon_run", ["script", "started_at"])
    op.create_index("ix_daemon_run_started_at", "daemon_run", ["started_at"])
    op.create_table(
        "daemon_server",
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("server", name="pk_daemon_server"),
    )
    op.create_table(
        "panda_process_lock",
        sa.Column("component", sa.String(255), nullable=False),
        sa.Column("locked_by", sa.String(255), nullable=False),
        sa.Column("locked_time", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("component", name="pk_panda_process_lock"),
    )


def downgrade() -> None:
    op.drop_table("panda_process_lock")
    op.drop_table("daemon_server")
    op.drop_index("ix_daemon_run_started_at", table_name="daemon_run")
    op.drop_index("ix_daemon_run_script_started_at", table_name="daemon_run")
    op.drop_table("daemon_run")
    op.drop_table("daemon_lease")

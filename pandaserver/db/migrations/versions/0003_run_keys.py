"""Keys for run rows: which master dispatched a run (``daemon_run.master_id``, a random
id per master process, and ``master_pid``) and its run number (``run_id``).

A run's row is inserted when it is dispatched (``running``) and closed when it ends;
``(master_id, run_id)`` is unique, so every write of a run (the start, the end, a write
replayed after an outage or from the spool file) lands on the one row. The index on
``outcome`` finds the runs still open, which a master that learns their master died closes
as ``lost``. Older rows keep NULLs (NULLs never collide in a unique index).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
# nullable columns and indexes on them: older code leaves them NULL (NULLs never collide)
compatibility = "expand"


def upgrade() -> None:
    op.add_column("daemon_run", sa.Column("master_id", sa.String(32), nullable=True))
    op.add_column("daemon_run", sa.Column("master_pid", sa.Integer(), nullable=True))
    op.add_column("daemon_run", sa.Column("run_id", sa.BigInteger(), nullable=True))
    op.create_index("uq_daemon_run_master_id_run_id", "daemon_run", ["master_id", "run_id"],
                    unique=True)
    op.create_index("ix_daemon_run_outcome", "daemon_run", ["outcome"])


def downgrade() -> None:
    op.drop_index("ix_daemon_run_outcome", table_name="daemon_run")
    op.drop_index("uq_daemon_run_master_id_run_id", table_name="daemon_run")
    with op.batch_alter_table("daemon_run") as batch:
        batch.drop_column("run_id")
        batch.drop_column("master_pid")
        batch.drop_column("master_id")

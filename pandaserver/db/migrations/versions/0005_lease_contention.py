"""Contention on each lease, kept on the lease row instead of one history row per loser.

``contended``: how many grant attempts the lease refused, ever (a counter; rates come
from its differences). ``contended_by``/``contended_at``: the server of the latest
refused attempt and when (database clock). The holder of that moment is the row's
``owner_server``. Before this, every refused attempt wrote a ``skipped`` row to
``daemon_run``, so K servers multiplied a sync script's history by K.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0005"
down_revision: str | None = "0004"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
# columns with a server default or nullable: older code's inserts get the default
compatibility = "expand"


def upgrade() -> None:
    op.add_column("daemon_lease", sa.Column("contended", sa.BigInteger(), nullable=False,
                                            server_default="0"))
    op.add_column("daemon_lease", sa.Column("contended_by", sa.String(255), nullable=True))
    op.add_column("daemon_lease", sa.Column("contended_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_lease") as batch:
        batch.drop_column("contended_at")
        batch.drop_column("contended_by")
        batch.drop_column("contended")

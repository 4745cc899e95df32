"""The master process that holds a lease, recorded at its grant (``owner_token``).

A renewal or release used to name only the lease and its generation. After a failover of
the database to a standby that missed the last grant, another server can be granted the
same generation again; the old holder's renewal would then renew that server's lease and
two servers would run. So a grant records the master's random id per process (the
``master_id`` of its history rows) and a renewal or release names it, with the server and
pid (``pandaserver/db/stores/leases.py``).

Additive and nullable: a previous release, which does not know the column, grants, renews
and releases as before (its grants leave the column as it was; its renewals do not look).

Revision ID: 0011
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0009"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a nullable column: code of every earlier revision ignores it


def upgrade() -> None:
    op.add_column("daemon_lease", sa.Column("owner_token", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_lease") as batch:
        batch.drop_column("owner_token")

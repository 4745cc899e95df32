"""The firing a cron script's lease was last granted for: once per firing, fleet-wide.

``firing`` (nullable; NULL for a script on a period): the latest wall-clock firing of a sync
script's cron schedule that the fleet has served (granted, or passed over when the lease
row was first made for the schedule). A grant for a firing at or before it is refused, so
each firing runs once whichever server asks and whatever its clock says (the grant is
judged on the database's clock: ``pandaserver/db/stores/leases.py``). Additive: a release that
knows nothing of it leaves it alone.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pandaserver.db.base.servertime import UtcDateTime

revision = "0009"
down_revision: str | None = "0008"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
compatibility = "expand"  # a nullable column: code of every earlier revision ignores it


def upgrade() -> None:
    op.add_column("daemon_lease", sa.Column("firing", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daemon_lease") as batch:
        batch.drop_column("firing")

"""Run counters kept as runs end: ``/metrics`` reads a few rows, not the history.

- ``daemon_run_count``: per (script, server, outcome) the runs ended so, their durations'
  sum (microseconds) and cumulative bucket counts, and the dispatch delays' count, sum and
  bucket counts (pandaserver/db/stores/runcounts.py, which keeps them);
- ``daemon_run.tally`` (default 0): 1 on a row just ended and not yet counted, with an
  index that finds those few rows (partial on PostgreSQL and SQLite).

Additive only: a master of the previous release keeps working on this schema (its rows are
written with ``tally`` 0, so they are not counted: see docs/web.md). The history already
there is counted once here (one read of every ended row, in steps of 20,000 by id).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
# a new table and a new column with a default: code of every earlier revision ignores them
# (its runs are then not counted: docs/web.md)
compatibility = "expand"

TALLY = "tally = 1"
DURATION_BUCKETS = 11
DELAY_BUCKETS = 10


def _counter(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    op.add_column("daemon_run", sa.Column("tally", sa.SmallInteger(), nullable=False,
                                          server_default="0"))
    op.create_index("ix_daemon_run_tally", "daemon_run", ["tally"],
                    postgresql_where=sa.text(TALLY), sqlite_where=sa.text(TALLY))
    op.create_table(
        "daemon_run_count",
        sa.Column("script", sa.String(128), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        _counter("runs"),
        _counter("duration_us"),
        *(_counter(f"duration_le_{i}") for i in range(DURATION_BUCKETS)),
        _counter("delays"),
        _counter("delay_us"),
        *(_counter(f"delay_le_{i}") for i in range(DELAY_BUCKETS)),
        sa.PrimaryKeyConstraint("script", "server", "outcome", name="pk_daemon_run_count"),
    )
    from pandaserver.db.stores.runcounts import count_rows

    count_rows(op.get_bind())


def downgrade() -> None:
    op.drop_table("daemon_run_count")
    op.drop_index("ix_daemon_run_tally", table_name="daemon_run")
    with op.batch_alter_table("daemon_run") as batch:
        batch.drop_column("tally")

"""Indexes that keep the history's reads fast with a year of it (millions of rows).

Each read walks one index and stops early, instead of reading the table:

- ``(started_at, id)``: the newest runs (``panda-daemon history``), ``/metrics``' window,
  pruning by age (replaces ``(started_at)``: the order has ``id`` as its tie-break);
- ``(script, started_at, id)``: one script's newest runs (``history NAME``, the timeline
  page), its first run, pruning by rows (replaces ``(script, started_at)``);
- ``(script, server, started_at, id) WHERE outcome <> 'skipped'``: the fleet page's newest
  run per script and server, found by a skip scan (``pandaserver/db/stores/skipscan.py``); partial
  on PostgreSQL and SQLite, whole on MySQL/MariaDB (no partial indexes there);
- ``(script, outcome, ended_at)``: each script's last success.

On a big table the upgrade builds them under a lock that blocks writes to ``daemon_run``
meanwhile (masters keep their history in memory and write it afterwards): up to minutes for
millions of rows (benchmarks/bighistory.py built all seven indexes of 5 million rows in
35 s to 217 s on a 2-core machine, quiet to loaded; docs/database.md, "Sizing the history").

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: tuple[str, ...] | None = None
depends_on: tuple[str, ...] | None = None
# new indexes; the two dropped ones are prefixes of new ones, which serve older code's reads
compatibility = "expand"

NOT_SKIPPED = "outcome <> 'skipped'"


def upgrade() -> None:
    op.create_index("ix_daemon_run_started_at_id", "daemon_run", ["started_at", "id"])
    op.create_index("ix_daemon_run_script_started_at_id", "daemon_run",
                    ["script", "started_at", "id"])
    op.create_index("ix_daemon_run_script_server_started_at_id", "daemon_run",
                    ["script", "server", "started_at", "id"],
                    postgresql_where=sa.text(NOT_SKIPPED), sqlite_where=sa.text(NOT_SKIPPED))
    op.create_index("ix_daemon_run_script_outcome_ended_at", "daemon_run",
                    ["script", "outcome", "ended_at"])
    op.drop_index("ix_daemon_run_script_started_at", table_name="daemon_run")
    op.drop_index("ix_daemon_run_started_at", table_name="daemon_run")


def downgrade() -> None:
    op.create_index("ix_daemon_run_started_at", "daemon_run", ["started_at"])
    op.create_index("ix_daemon_run_script_started_at", "daemon_run", ["script", "started_at"])
    op.drop_index("ix_daemon_run_script_outcome_ended_at", table_name="daemon_run")
    op.drop_index("ix_daemon_run_script_server_started_at_id", table_name="daemon_run")
    op.drop_index("ix_daemon_run_script_started_at_id", table_name="daemon_run")
    op.drop_index("ix_daemon_run_started_at_id", table_name="daemon_run")

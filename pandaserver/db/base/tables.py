"""Every table panda-daemon owns, as SQLAlchemy Core, in one place.

The schema version lives in Alembic's version table, renamed ``daemon_schema`` so
that it can never collide with an ``alembic_version`` table of the PanDA database
these tables may share. Migrations (``pandaserver/db/migrations``) create exactly
these tables; a test compares the two.

Portable types only: strings with lengths, integers, floats, text and
``UtcDateTime`` (``timestamp with time zone`` on PostgreSQL, text on SQLite,
``DATETIME(6)`` on MySQL/MariaDB, always UTC).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

from pandaserver.db.base.servertime import UtcDateTime

# the version and hold tables are named where the schema check reads them with plain SQL
from pandaserver.db.direct.schemacheck import COMPAT_TABLE as COMPAT_TABLE
from pandaserver.db.direct.schemacheck import HOLD_TABLE
from pandaserver.db.direct.schemacheck import VERSION_TABLE as VERSION_TABLE

# the predicate of the partial index on (script, server, started_at, id), spelt the same in
# the queries that use it (skipscan.py): SQLite matches a partial index's WHERE term by term
NOT_SKIPPED_SQL = "outcome <> 'skipped'"

TALLY_SQL = "tally = 1"  # the partial index's predicate, spelt as runcounts.py queries it
# the bucket columns of daemon_run_count: as many as runcounts.py's bucket edges
RUN_COUNT_DURATION_BUCKETS = 11
RUN_COUNT_DELAY_BUCKETS = 10

# A 64-bit id on real servers; SQLite only autoincrements an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# One row per sync script: who may run it now, and when it is next due fleet-wide.
daemon_lease = Table(
    "daemon_lease",
    metadata,
    Column("name", String(128), primary_key=True),
    # bumped by every grant and by a forced release; release/renew must name it
    Column("generation", BigInteger, nullable=False),
    Column("owner_server", String(255), nullable=True),
    Column("owner_pid", Integer, nullable=True),
    Column("acquired_at", UtcDateTime, nullable=True),
    # NULL once released: then only next_due decides
    Column("expires_at", UtcDateTime, nullable=True),
    Column("next_due", UtcDateTime, nullable=False),
    Column("period", Float, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # refused grant attempts, ever; the server of the latest one and when (migration 0005)
    Column("contended", BigInteger, nullable=False, server_default="0"),
    Column("contended_by", String(255), nullable=True),
    Column("contended_at", UtcDateTime, nullable=True),
    # the master process holding it (its random id per process, recorded at the grant; NULL
    # from older versions): renewals and releases name it (migration 0011)
    Column("owner_token", String(32), nullable=True),
    # a cron script's lease: the latest firing the fleet served (migration 0009)
    Column("firing", UtcDateTime, nullable=True),
)

# One row per run (or per skipped attempt), for `panda-daemon history`.
daemon_run = Table(
    "daemon_run",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("script", String(128), nullable=False),
    Column("server", String(255), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("generation", BigInteger, nullable=True),
    Column("due_at", UtcDateTime, nullable=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
    # running | ok | failed | timeout | lost | skipped  (checked in Python: see history.py)
    Column("outcome", String(16), nullable=False),
    Column("error", Text, nullable=True),
    # which master incarnation dispatched it (a random id per master process; NULL in rows
    # of older versions), that master's pid, and its run number: (master_id, run_id) keys
    # every write of the run, so a replayed write never adds a second row
    Column("master_id", String(32), nullable=True),
    Column("master_pid", Integer, nullable=True),
    Column("run_id", BigInteger, nullable=True),
    # 1: ended and not yet added to daemon_run_count (runcounts.py; migration 0007)
    Column("tally", SmallInteger, nullable=False, server_default="0"),
    # the indexes of migration 0006: each read of the history pages walks one of them
    # (docs/database.md, "Sizing the history"): the newest runs (`panda-daemon history`,
    # /metrics' window, pruning by age) ...
    Index("ix_daemon_run_started_at_id", "started_at", "id"),
    # ... of one script (history NAME, the timeline, its first run, pruning by rows) ...
    Index("ix_daemon_run_script_started_at_id", "script", "started_at", "id"),
    # ... per script and server, skipped attempts left out (the fleet page's last runs;
    # partial where the database can: on MySQL/MariaDB it holds every row)
    Index("ix_daemon_run_script_server_started_at_id", "script", "server", "started_at", "id",
          postgresql_where=text(NOT_SKIPPED_SQL), sqlite_where=text(NOT_SKIPPED_SQL)),
    # ... and each script's last success
    Index("ix_daemon_run_script_outcome_ended_at", "script", "outcome", "ended_at"),
    Index("uq_daemon_run_master_id_run_id", "master_id", "run_id", unique=True),
    Index("ix_daemon_run_outcome", "outcome"),  # finds the few runs still open
    # ... and the few ended runs not yet counted (partial where the database can)
    Index("ix_daemon_run_tally", "tally", postgresql_where=text(TALLY_SQL),
          sqlite_where=text(TALLY_SQL)),
)

# Counters of ended runs per script, server and outcome, kept as runs end (runcounts.py):
# /metrics reads these few rows, not the history. Never pruned (counters only go up).
daemon_run_count = Table(
    "daemon_run_count",
    metadata,
    Column("script", String(128), primary_key=True),
    Column("server", String(255), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("runs", BigInteger, nullable=False, server_default="0"),
    # durations (of rows with an end): sum in microseconds, cumulative count per bucket
    Column("duration_us", BigInteger, nullable=False, server_default="0"),
    *(Column(f"duration_le_{i}", BigInteger, nullable=False, server_default="0")
      for i in range(RUN_COUNT_DURATION_BUCKETS)),
    # dispatch delays (of rows with a due time): count, sum in microseconds, buckets
    Column("delays", BigInteger, nullable=False, server_default="0"),
    Column("delay_us", BigInteger, nullable=False, server_default="0"),
    *(Column(f"delay_le_{i}", BigInteger, nullable=False, server_default="0")
      for i in range(RUN_COUNT_DELAY_BUCKETS)),
)

# One row per master process of the fleet, refreshed every heartbeat_interval.
daemon_server = Table(
    "daemon_server",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("config_hash", String(64), nullable=False),
    # the master's wall clock at its last beat (NULL from older masters): with last_seen,
    # the server's clock offset to the database
    Column("server_time", UtcDateTime, nullable=True),
    # what the master last reported of itself (JSON: draining, crash-looping scripts)
    Column("state", Text, nullable=True),
)

# The PanDA process locks of TaskBuffer.lockProcess_PANDA & co. (JEDI_Process_Lock
# in PanDA, keyed there by vo/label/cloud/queue/resource too, always 'default').
panda_process_lock = Table(
    "panda_process_lock",
    metadata,
    Column("component", String(255), primary_key=True),
    Column("locked_by", String(255), nullable=False),
    Column("locked_time", UtcDateTime, nullable=False),
)

# Operator commands (``panda-daemon pause``, ``run-now``, ``kill``, ``drain`` ...): one row
# each, never changed but for ``claimed_by`` (the one server that took a run-now).
daemon_command = Table(
    "daemon_command",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("verb", String(32), nullable=False),
    Column("target", String(255), nullable=False),  # a script, or a server for drain
    Column("server", String(255), nullable=True),  # NULL: every server
    Column("reason", Text, nullable=True),
    Column("requested_by", String(255), nullable=False),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("claimed_by", String(255), nullable=True),
)

# When each server acted on a command, and what it did.
daemon_command_ack = Table(
    "daemon_command_ack",
    metadata,
    Column("command_id", BigInteger, primary_key=True),
    Column("server", String(255), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("acted_at", UtcDateTime, nullable=False),
    Column("note", Text, nullable=True),
)

# What stays in force: a pause (kind "pause", name a script, server "*" or one server) or
# a drain (kind "drain", name and server the drained server). Removed by resume/undrain.
daemon_hold = Table(
    HOLD_TABLE,
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("server", String(255), primary_key=True),
    Column("command_id", BigInteger, nullable=False),
    Column("requested_by", String(255), nullable=False),
    Column("reason", Text, nullable=True),
    Column("since", UtcDateTime, nullable=False),
)

# PanDA's CONFIG table, read by TaskBuffer.getConfigValue and managed by ``panda-daemon
# config-value``: one row per (app, component, key); ``vo`` NULL is for every VO. A "json"
# value is kept in ``value_json`` (as in PanDA). Who set it last, and when (migration 0008).
panda_config = Table(
    "panda_config",
    metadata,
    Column("app", String(64), primary_key=True),
    Column("component", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("vo", String(32), nullable=True),
    Column("value", Text, nullable=False),
    Column("value_json", Text, nullable=True),
    Column("type", String(16), nullable=False),
    Column("descr", Text, nullable=True),
    Column("modified_by", String(255), nullable=True),
    Column("modified_at", UtcDateTime, nullable=True),
)

# Which code works with each schema revision `db upgrade` reached (migration 0012): code
# whose newest revision is ``oldest_code`` or later (docs/database.md, "Rolling upgrades").
daemon_schema_compat = Table(
    COMPAT_TABLE,
    metadata,
    Column("revision", String(32), primary_key=True),
    Column("oldest_code", String(32), nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),  # database clock
    Column("recorded_by", String(255), nullable=False),  # panda-daemon VERSION on HOST
)

# When a master of the fleet first reached each history of a database server (migration
# 0013): a master started soon after a failover waits until the old leases have fenced
# (pandaserver/db/base/serverid.py). Written and read with plain SQL on a fresh connection.
TIMELINE_TABLE = "daemon_db_timeline"
daemon_db_timeline = Table(
    TIMELINE_TABLE,
    metadata,
    Column("system_id", String(128), primary_key=True),  # MySQL: SERVER_ID@HOST:PORT
    Column("timeline", Integer, primary_key=True),
    Column("first_seen", UtcDateTime, nullable=False),  # database clock
    Column("seen_by", String(255), nullable=False),  # HOST/SERVER pid PID
)

OWNED_TABLES = (daemon_lease, daemon_run, daemon_server, panda_process_lock, daemon_command,
                daemon_command_ack, daemon_hold, daemon_schema_compat, panda_config,
                daemon_run_count, daemon_db_timeline)

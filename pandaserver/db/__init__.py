"""panda-daemon's own database, in three layers and the migrations:

- ``pandaserver.db.base``: reaching the database and its schema (``engine``: ``make_engine``,
  ``database_url``, ``safe_url``, ``describe_db_error``; ``schema``: ``upgrade``,
  ``current_revision``, ``check_schema``, ``ensure_schema``; ``tables``, the database's
  clock, the one atomic upsert, the identity of the server reached)
- ``pandaserver.db.stores``: the statements of each table (leases, history, heartbeats,
  operator commands, pruning), built on the base and never imported by it
- ``pandaserver.db.direct``: the database without SQLAlchemy (plain ``sqlite3`` and plain
  rows), below the base, for the commands that answer at once and the master's start
- ``pandaserver.db.migrations``: the Alembic migrations (``pandaserver.db.base.schema`` runs them)

The commands on it (``history``, ``locks``, ``unlock``, ``db upgrade``) are in the command
layer, ``pandaserver.commands.database``.
"""

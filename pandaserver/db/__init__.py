"""panda-daemon's own database: engine, tables, migrations, leases, history, heartbeats.

The public pieces, by module:

- ``engine``: ``make_engine(cfg)``, ``database_url(cfg)``, ``safe_url``, ``describe_db_error``
- ``schema``: ``upgrade``, ``current_revision``, ``check_schema``, ``ensure_schema``
- ``leases``: ``LeaseStore`` (fenced fleet-wide leases for sync scripts)
- ``history``: ``HistoryStore``, ``RunRecord``, ``RunEnd``; ``pending``: ``PendingWrites``
- ``heartbeat``: ``HeartbeatStore``, ``config_hash``
- ``operator_commands``: ``ControlStore`` (the operators' commands and holds)

The commands on it (``history``, ``locks``, ``unlock``, ``db upgrade``) are in the command
layer, ``pandaserver.commands.database``.
"""

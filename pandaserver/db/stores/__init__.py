"""The statements of each table, above ``pandaserver.db.base``:

- ``leases``: ``LeaseStore`` (fenced fleet-wide leases for sync scripts); ``leasefirings``
  (a cron script's lease, once per firing)
- ``history``: ``HistoryStore``, ``RunRecord``, ``RunEnd``; ``runwrites`` (keyed run rows);
  ``pending``: ``PendingWrites``; ``runcounts`` (the counters of /metrics)
- ``pruning`` (the history kept, by age and rows per script); ``skipscan`` (one row per key
  without reading them all)
- ``heartbeat``: ``HeartbeatStore``, ``config_hash``
- ``operator_commands``: ``ControlStore`` (the operators' commands and holds)
"""

"""The database without SQLAlchemy: plain ``sqlite3`` and plain rows, the lowest layer of
``pandaserver.db``.

Here is what the commands that answer at once and the master's start need of the database
before (or instead of) importing SQLAlchemy, whose import is most of their time:

- ``statedir``: the state directory and its default SQLite file; ``credentials``: a
  refused login told apart; ``duerule``: the due-time tolerance
- ``revisions``: the migrations' chain, read without Alembic; ``schemacheck``: the schema
  check's verdict and statements, and the default SQLite file's check with ``sqlite3``
- ``sqlitedirect``: a SQLite file reached by ``sqlite3``
- plain rows: ``operator_rows`` (the operators' verbs, commands, acknowledgements and
  holds) and ``operator_sqlite`` (their statements compiled for SQLite, run by ``sqlite3``);
  ``fleetrows`` (the heartbeat and lease rows the fleet views read)

Nothing here imports SQLAlchemy, Alembic or ``pandaserver.db.base``/``pandaserver.db.stores``
(import-linter contracts in pyproject.toml); they may import it.
"""

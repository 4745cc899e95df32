"""The database's base: reaching it and its schema, below the statements of each table.

- reaching it: ``engine`` (URL, driver, bounds, ``socket_of``), ``multihost`` (URLs of
  several hosts), ``credentials``, ``statedir`` (the SQLite default's directory),
  ``serverid`` (which server was reached)
- speaking each dialect: ``servertime`` (the database's clock, its UTC type), ``upsert``
  (the one atomic insert-or-update-where)
- the schema: ``tables`` (SQLAlchemy Core tables), ``schema`` (upgrade and check),
  ``revisions`` (the migrations' chain, read without Alembic)

Nothing here imports the statements of the tables above it.
"""

"""The database's base: reaching it and its schema, below the statements of each table.

- reaching it: ``engine`` (URL, driver, bounds, ``socket_of``), ``multihost`` (URLs of
  several hosts), ``serverid`` (which server was reached)
- speaking each dialect: ``servertime`` (the database's clock, its UTC type), ``upsert``
  (the one atomic insert-or-update-where); ``prepared`` (an idle master's statements,
  compiled once)
- the schema: ``tables`` (SQLAlchemy Core tables), ``schema`` (upgrade and check)

What needs no SQLAlchemy (the state directory, the migrations' chain, the schema check's
verdict, a SQLite file through ``sqlite3``) is below, in ``pandaserver.db.direct``.
Nothing here imports the statements of the tables above it.
"""

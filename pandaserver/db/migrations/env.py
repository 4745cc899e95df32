"""Alembic environment: runs on the connection ``pandaserver.db.base.schema`` hands over.

There is no alembic.ini and no offline mode; use ``panda-daemon db upgrade`` (or
``pandaserver.db.base.schema.upgrade(engine)``).
"""

from __future__ import annotations

from alembic import context

from pandaserver.db.base.tables import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "panda-daemon migrations run only through pandaserver.db.base.schema.upgrade"
        " (`panda-daemon db upgrade`)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

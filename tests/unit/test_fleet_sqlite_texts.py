"""``fleet`` on SQLite runs ``queries.read_fleet``'s own statements: the checked-in texts
of pandaserver/web/fleetsqlite.py are the Core statements compiled again, and its list of
timestamp columns is the statements' own."""

from __future__ import annotations

from sqlalchemy.dialects import sqlite

from pandaserver.db.base.servertime import UtcDateTime
from pandaserver.web.fleetsqlite import SQLITE, TIMES
from pandaserver.web.queries import fleet_statements


def test_the_checked_in_texts_are_the_fleet_statements_compiled_for_sqlite() -> None:
    statements = fleet_statements()
    compiled = {name: str(s.compile(dialect=sqlite.dialect(paramstyle="named"),
                                    compile_kwargs={"literal_binds": True}))
                for name, s in statements.items()}
    assert compiled == SQLITE, "regenerate fleetsqlite.SQLITE from queries.fleet_statements()"
    timestamps = {name: tuple(c.name for c in s.selected_columns
                              if isinstance(c.type, UtcDateTime))
                  for name, s in statements.items() if name != "db_now"}  # read by position
    assert timestamps == TIMES

"""The database layer's statement modules import no SQL dialect at load: a master on SQLite
or PostgreSQL never imports MySQL's (``pandaserver.db.base.upsert.dialect_insert``)."""

from __future__ import annotations

import subprocess
import sys

MODULES = ("pandaserver.db.base.servertime", "pandaserver.db.base.upsert", "pandaserver.db.stores.runwrites",
           "pandaserver.db.stores.runcounts", "pandaserver.daemons.fleet.fleetdb",
           "pandaserver.daemons.master.loop")


def test_the_masters_modules_leave_the_mysql_dialect_unloaded() -> None:
    code = (f"import sys\nfor name in {MODULES!r}: __import__(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.dialects.mysql')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_dialects_insert_is_its_own() -> None:
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    from pandaserver.db.base.upsert import dialect_insert

    assert dialect_insert("postgresql") is postgresql.insert
    assert dialect_insert("sqlite") is sqlite.insert
    assert dialect_insert("mysql") is mysql.insert

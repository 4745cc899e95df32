"""Opening the master's database side at start: connect, check the schema, start.

``open_fleet`` builds the master's ``FleetDb`` (fleetdb.py) and checks (on SQLite:
upgrades) the schema once, on a thread joined for ``STARTUP_SCHEMA_TIMEOUT`` at most: a
database that does not answer starts the master in an outage, never keeps it from
starting. What must refuse the start (a newer schema, refused credentials) raises
``StartupError`` with the exit status.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from pandaserver import exitcodes
from pandaserver.config import PandaConfig
from pandaserver.daemons.base.clock import Clock
from pandaserver.daemons.fleet.fleetdb import IO_TIMEOUT, STATEMENT_TIMEOUT, FleetDb
from pandaserver.daemons.fleet.history.journal import Journal, journal_path
from pandaserver.daemons.fleet.history.spool import Spool, spool_path
from pandaserver.daemons.fleet.late import StartupError as StartupError
from pandaserver.db.base.engine import (
    DatabaseConfigError,
    default_state_dir,
    describe_db_error,
    make_engine,
    safe_url,
)
from pandaserver.db.base.schema import SchemaError, ensure_schema
from pandaserver.db.direct.credentials import credentials_refused

log = logging.getLogger("panda.master")

STARTUP_SCHEMA_TIMEOUT = 15.0  # a migration of SQLite at start may take a moment


def open_fleet(cfg: PandaConfig, server: str, clock: Clock, member: bool = True,
               master_id: str | None = None, journal: Journal | None = None) -> FleetDb:
    """Connect to the configured database and check its schema (upgrading SQLite).

    A newer schema, or an older one on a shared server database, refuses the start; an
    unreachable database does not: the master starts in an outage and resumes by itself.
    ``member``: a master of the fleet (not ``run-once``): it records run starts, replays
    the history spooled by the last master of ``server`` and closes that master's open runs.
    ``master_id`` and ``journal``: a master that ran before its database side was opened
    (late.py) keeps its id and its journal, which holds those runs' starts.
    """
    try:
        # autocommit without a ping: one round trip per lease grant (lease statements retry
        # once on a fresh connection after a dropped one)
        engine = make_engine(cfg, autocommit=True, pre_ping=False,
                             statement_timeout=STATEMENT_TIMEOUT, io_timeout=IO_TIMEOUT)
    except (DatabaseConfigError, KeyError, ValueError) as exc:
        raise StartupError(exitcodes.RET_CONFIG, f"database settings: {exc}") from None
    fleet = FleetDb(engine, server, cfg.daemon, clock.monotonic, clock.wall(), wall=clock.wall,
                    member=member, master_id=master_id)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            ensure_schema(engine)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    # bounded: a database that does not answer must not keep the master from starting
    checker = threading.Thread(target=check, name="db-schema-check", daemon=True)
    checker.start()
    checker.join(STARTUP_SCHEMA_TIMEOUT)
    error = outcome[0] if outcome else TimeoutError(
        f"no answer from the database in {STARTUP_SCHEMA_TIMEOUT:g} s")
    if error is None:
        fleet.schema_ok = True
    elif isinstance(error, SchemaError):
        raise StartupError(exitcodes.RET_SCHEMA, str(error)) from None
    elif isinstance(error, SQLAlchemyError) and credentials_refused(error):
        raise StartupError(exitcodes.RET_CONFIG, "the database refused the credentials:"
                           f" {describe_db_error(error, engine.url)}; fix the user or password"
                           " of the configuration (not an outage: retrying would not heal it)")
    elif isinstance(error, SQLAlchemyError | TimeoutError):
        fleet._down(clock.monotonic(), error)
    else:
        raise error
    log.info("database: %s", safe_url(engine.url))
    if member:
        state_dir = default_state_dir()
        fleet.keeper.at_start(Spool(spool_path(state_dir, server)), fleet.history_usable(),
                              journal or Journal(journal_path(state_dir, server), clock.monotonic))
    return fleet

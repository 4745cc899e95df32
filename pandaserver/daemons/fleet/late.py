"""A master's database side opened after its first run, and what stands in for it until then.

The database layer (SQLAlchemy, the statements, the lanes) costs a master a few tenths of a
second of CPU at start; a script that needs no lease does not need it to start. So when
the configuration's database is the state directory's SQLite file and its schema was seen
to be this code's without SQLAlchemy (``pandaserver.db.direct.schemacheck``, before any run:
a refused schema still runs nothing), ``run`` and ``start`` build the master with a
``LateFleet`` (``pandaserver.commands.launch``), and the master opens its ``FleetDb`` just
after its first hand-over (``Master.open_late``). Until then:

- ``EarlyRuns`` records the runs: each start is appended to the history journal at once,
  under the master id the ``FleetDb`` then takes, so a kill -9 before the database side is
  open loses no run (the next master replays it); opening replays the journal, which
  writes them; ends are logged and handed over;
- ``PendingLeases`` (leasemanager.py) keeps sync scripts from asking;
- the operators' commands are read from the opening on (a pause or drain in force makes
  the master open its database side first: ``schemacheck.read_sqlite``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pandaserver.daemons.base.runs import LogRecorder, Run, RunRecord
from pandaserver.daemons.fleet.history.journal import Journal, run_start
from pandaserver.daemons.fleet.leasemanager import PendingLeases

if TYPE_CHECKING:
    from pandaserver.daemons.fleet.fleetdb import FleetDb

LATE_LIMIT = 1.0  # seconds after the start: opened then, if no run has started by then


class StartupError(Exception):
    """The master must not start; ``code`` is its exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class EarlyRuns:
    """The ``Recorder`` before the database side is open."""

    def __init__(self, server: str, master_id: str, journal: Journal) -> None:
        self.server = server
        self.master_id = master_id
        self.journal = journal
        self.log = LogRecorder()
        self.ended: list[RunRecord] = []

    def start(self, run: Run) -> None:
        self.journal.append(run.dispatched,
                            run_start(run, self.server, self.master_id, os.getpid()))

    def record(self, record: RunRecord) -> None:
        self.log.record(record)
        self.ended.append(record)

    def hand_over(self, fleet: FleetDb) -> None:
        """To the opened ``fleet`` (whose ``at_start`` replayed the journaled starts)."""
        for record in self.ended:
            fleet.record(record)
        self.ended.clear()


@dataclass
class LateFleet:
    """What a master needs to open its ``FleetDb`` later: ``opener(master_id, journal)``
    (``opening.open_fleet``), the database's URL for the workers' ``tbuf``."""

    opener: Callable[[str, Journal], FleetDb]
    database: str
    runs: EarlyRuns
    leases: PendingLeases = field(default_factory=PendingLeases)

    @classmethod
    def make(cls, opener: Callable[[str, Journal], FleetDb], database: str, server: str,
             journal: Journal) -> LateFleet:
        return cls(opener, database, EarlyRuns(server, uuid.uuid4().hex, journal))

    def open(self) -> FleetDb:
        """The ``FleetDb`` (raises ``StartupError`` when the database refuses the start)."""
        return self.opener(self.runs.master_id, self.runs.journal)

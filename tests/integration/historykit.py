"""The history path of one master driven in-process on a real SQLite file: a keeper
(``HistoryKeeper``) on a store that fails like an unreachable database on demand, a
clock the test moves, and the rows as the store reads them back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import wait_for
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from pandaserver.daemons.base import runs
from pandaserver.daemons.fleet.history.keeper import HistoryKeeper
from pandaserver.daemons.fleet.history.spool import Spool
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.runrecords import OK, RunRow


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class FlakyStore(HistoryStore):
    """A real store that fails like an unreachable database while ``down`` is set, and
    refuses rows of the script named ``bad``."""

    down = False
    weird = False

    def write_many(self, items: Any) -> int:
        if self.down:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        if self.weird:  # a bug somewhere below (a pool event hook, say)
            raise KeyError(140187556366016)
        if any(getattr(item, "script", "") == "bad" for item in items):
            raise IntegrityError("INSERT", {}, Exception("bad row"))
        return super().write_many(items)


class Harness:
    def __init__(self, engine: Engine, tmp_path: Path, master_id: str = "m1") -> None:
        self.clock = Clock()
        self.store = FlakyStore(engine)
        self.outages: list[BaseException] = []
        self.ups = 0
        self.keeper = HistoryKeeper(
            self.store, server="srv", master_id=master_id, master_pid=4242,
            monotonic=self.clock, heartbeat_interval=lambda: 1000.0, url=engine.url,
            on_outage=self.outages.append, on_written=self.up)
        self.spool = Spool(tmp_path / "state" / "history-spool-srv.jsonl")

    def up(self) -> None:
        self.ups += 1

    def run(self, run_id: int, script: str = "x") -> runs.Run:
        return runs.Run(id=run_id, script=script, worker=1, pid=900 + run_id, due=self.clock.now,
                        dispatched=self.clock.now, timeout_at=self.clock.now + 60)

    def ended(self, run: runs.Run, outcome: str = OK) -> runs.RunRecord:
        return runs.RunRecord(script=run.script, server="srv", pid=run.pid, run_id=run.id,
                              generation=None, outcome=outcome, error=None, duration=0.5,
                              dispatch_delay=0.0, queued=0.0, ended=self.clock.now)

    def settle(self, usable: bool = True) -> None:
        """Flush and wait until the writer answered everything."""
        self.keeper.flush(usable)

        def answered() -> bool:
            self.keeper.collect()
            return not self.keeper.writer.busy

        wait_for(answered, 10, "the writer to answer everything")


def rows(store: HistoryStore) -> list[RunRow]:
    return sorted(store.query(limit=500), key=lambda r: (r.master_id or "", r.run_id or 0))

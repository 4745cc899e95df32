"""The lease row's contention counters (``contended``, ``contended_by``, ``contended_at``)
as ``panda-daemon locks`` shows them, in text and JSON, on each backend. The counters are
set here with a plain UPDATE, as the grant statement leaves them."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, update

from pandaserver.commands.database import cmd_locks
from pandaserver.config import PandaConfig
from pandaserver.db.base.servertime import db_now
from pandaserver.db.base.tables import daemon_lease
from pandaserver.db.stores.history import HistoryStore
from pandaserver.db.stores.leases import LeaseStore
from pandaserver.db.stores.runrecords import OK, RunRecord


def test_locks_show_refusals_ever_and_the_latest_refused_server(
        db_engine: Engine, config_for: Callable[..., PandaConfig],
        capsys: pytest.CaptureFixture[str]) -> None:
    store = LeaseStore(db_engine)
    assert store.try_acquire("busy", "srv-a", 11, period=60, ttl=120).granted
    assert store.try_acquire("calm", "srv-a", 11, period=60, ttl=120).granted
    calm = store.get("calm")
    assert calm is not None and (calm.contended, calm.contended_by, calm.contended_ago) == (
        0, None, None)
    with db_engine.begin() as conn:
        now = db_now(conn)
        conn.execute(update(daemon_lease).where(daemon_lease.c.name == "busy").values(
            contended=41, contended_by="srv-c", contended_at=now - timedelta(seconds=30)))
    busy = store.get("busy")
    assert busy is not None and (busy.contended, busy.contended_by) == (41, "srv-c")
    assert busy.contended_ago == pytest.approx(30, abs=5)
    cfg = config_for(db_engine.url)

    assert cmd_locks(cfg, argparse.Namespace(json=True)) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (rows["busy"]["contended"], rows["busy"]["contended_by"]) == (41, "srv-c")
    assert rows["busy"]["contended_ago"] == pytest.approx(30, abs=5)
    assert rows["busy"]["contended_at"].startswith(str(now.year))
    assert (rows["calm"]["contended"], rows["calm"]["contended_by"],
            rows["calm"]["contended_at"], rows["calm"]["contended_ago"]) == (0, None, None, None)

    assert cmd_locks(cfg, argparse.Namespace(json=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "REFUSED (LATEST)" in lines[0]
    busy_line = next(line for line in lines if line.startswith("busy"))
    assert re.search(r"  41, srv-c \d+\.\ds ago$", busy_line.rstrip()), busy_line
    assert next(line for line in lines if line.startswith("calm")).rstrip().endswith(" 0")


def test_locks_say_finished_for_a_held_lease_whose_run_has_ended(
        db_engine: Engine, config_for: Callable[..., PandaConfig],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A finished run's release rides on its holder's next grant (daemons/fleet/releases.py):
    until it lands, the lease is held; its run's history row says the run has ended."""
    store, history = LeaseStore(db_engine), HistoryStore(db_engine)
    got = store.try_acquire("tick", "srv-a", 11, period=60, ttl=120, token="ma", run_id=1)
    assert got.granted and got.generation is not None
    cfg = config_for(db_engine.url)

    def state() -> str:
        assert cmd_locks(cfg, argparse.Namespace(json=True)) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert cmd_locks(cfg, argparse.Namespace(json=False)) == 0
        (line,) = [line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("tick")]
        assert line.split()[1] == row["state"], line
        return str(row["state"])

    assert state() == "held"  # running
    history.write_many([RunRecord("tick", "srv-a", 501, OK, generation=got.generation,
                                  duration=0.5, master_id="ma", master_pid=11, run_id=1)])
    assert state() == "finished"  # ended; the release has not landed
    assert store.release("tick", got.generation)
    assert state() == "free"

"""The chaos benchmark's short seeded run (benchmarks/chaos.py): three masters on a real
PostgreSQL with a streaming standby, each fault kind injected at least once (database
frozen, restarted and failed over to its standby, a master partitioned, SIGSTOPped,
killed with kill -9 and started again, a worker killed), then every invariant checked: no
two runs of a sync script at once, one history row with an outcome per run, nothing left
running or held, clean stops, no process left, every script running again. Timings are
reported, never asserted (the figures: docs/sizing.md).
"""

from __future__ import annotations

import io

import pytest

from benchmarks import chaos

SEED = 7
MINUTES = 1.0  # each kind once, then random faults until a minute has passed


@pytest.mark.timeout(600)
def test_a_short_seeded_chaos_run_keeps_every_invariant() -> None:
    report = chaos.run_chaos(MINUTES, SEED)
    text = io.StringIO()
    chaos.render(report, text)
    print(text.getvalue())
    assert {f["kind"] for f in report["faults"]} == set(chaos.FAULTS), text.getvalue()
    assert report["violations"] == [], text.getvalue()

"""A sync script contended by two real masters on a real PostgreSQL: the run history holds
its runs and nothing else (a refused attempt writes no row, however many servers ask); the
refusals are counted in each master's status file (``panda-daemon status``)."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness import running_master, script_env, wait_for, write_config
from pg import url_text
from sqlalchemy import URL

from pandaserver.daemons.fleet import rank
from pandaserver.service.hoststatus import local_status, render_local_status


def cli(tmp_path: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pandaserver.daemons.master", "-c", str(cfg),
                           "--server-name", "cli", *args], capture_output=True, text=True,
                          timeout=90, env=script_env(tmp_path / "cli.jsonl"),
                          stdin=subprocess.DEVNULL)


def json_of(tmp_path: Path, cfg: Path, *args: str) -> Any:
    result = cli(tmp_path, cfg, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_refused_attempts_are_counted_not_written_to_the_history(
        tmp_path: Path, pg_url: URL) -> None:
    """Runs of 0.6 s every 0.5 s: whoever does not hold the lease is refused while the
    other runs, period after period (before: one ``skipped`` history row each time)."""
    cfg = write_config(tmp_path, {"slow": {"module": "record", "period": 0.5, "sync": True,
                                           "timeout": 10, "arguments": [0.6]}},
                       db_url=url_text(pg_url), n_proc=1, heartbeat_interval=1)
    assert cli(tmp_path, cfg, "db", "upgrade").returncode == 0
    # the server preferred for the script (daemons/fleet/rank.py) starts second, while the other
    # holds the lease: the preferred one asks at every due time, so it is refused at least
    # once (the others only look at the lease table and ask for periods left ungranted)
    preferred, other = rank.order("slow", ["a", "b"])
    with ExitStack() as stack:
        masters = {other: stack.enter_context(running_master(cfg, tmp_path, server=other))}
        masters[other].wait_events(1, "start", "slow", timeout=60)
        masters[preferred] = stack.enter_context(
            running_master(cfg, tmp_path, server=preferred))
        wait_for(lambda: sum(len(m.events("end", "slow")) for m in masters.values()) >= 8,
                 60, "8 runs across the two masters")
        for master in masters.values():
            assert master.stop() == 0
    ran = {name: len(m.events("end", "slow")) for name, m in masters.items()}
    rows = json_of(tmp_path, cfg, "history", "slow", "--limit", "1000")
    # the history: the runs, each once, all ok; no row for any refused attempt
    assert sorted(r["outcome"] for r in rows) == ["ok"] * len(rows), \
        sorted({r["outcome"] for r in rows})
    assert {name: sum(1 for r in rows if r["server"] == name) for name in masters} == ran
    # the refusals: counted by each master, with the server that held the lease
    states = {name: local_status(name, tmp_path / "state") for name in masters}
    seen = {}
    for name, data in states.items():
        assert data is not None
        script = next(s for s in data["scripts"] if s["name"] == "slow")
        seen[name] = script["contention"]
    assert sum(c["refused"] for c in seen.values() if c) > 0, seen
    held = {name: c for name, c in seen.items() if c and c["held_elsewhere"]}
    assert held, f"no attempt found the lease held: {seen}"
    for name, c in held.items():
        assert c["holder"] == ({"a", "b"} - {name}).pop()
        text = render_local_status(states[name] or {})
        assert "sync leases refused here since the start" in text
        assert any(line.split()[:3] == ["slow", str(c["refused"]), str(c["held_elsewhere"])]
                   for line in text.splitlines()), text
    # the lease row carries the fleet-wide counters (filled by the grant statement)
    lease = next(row for row in json_of(tmp_path, cfg, "locks") if row["name"] == "slow")
    assert isinstance(lease["contended"], int) and "contended_by" in lease

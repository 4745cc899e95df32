"""The masters of this host, from their status files (``<state dir>/status-<server>.json``).

The master rewrites its file when something changes (see ``pandaserver.daemons.master.statusfile``);
times in it are "seconds from when it was written" (``written_at``, wall clock), so a
reader ages them by the time since. ``local_status(server)`` finds and reads one file;
``render_local_status(data)`` turns it into the text of ``panda-daemon status``;
``local_masters()`` reads every file (workers alive per server for the fleet pages).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import psutil

from pandaserver.config.cronspec import firing_text
from pandaserver.daemons.master.statusfile import read_status, status_path
from pandaserver.db.direct.statedir import default_state_dir
from pandaserver.fmt import span, table

STATUS_GLOB = "status-*.json"


def short_hostname() -> str:
    """This host's short name: the default ``--server-name`` of a master."""
    return socket.gethostname().split(".")[0] or "localhost"


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _annotate(data: dict[str, Any], path: Path) -> dict[str, Any]:
    master_alive = pid_alive(data.get("pid"))
    workers = data.get("workers")
    alive = 0
    if master_alive and isinstance(workers, list):
        alive = sum(1 for w in workers if isinstance(w, dict) and pid_alive(w.get("pid")))
    return {**data, "status_file": str(path), "master_alive": master_alive,
            "workers_alive": alive}


def local_status(server: str | None = None, state_dir: Path | None = None
                 ) -> dict[str, Any] | None:
    """The status of the local master named ``server``, as its file holds it, plus
    ``status_file``, ``master_alive`` and ``workers_alive``; None when there is none.

    Without ``server``: this host's short name if such a file exists, else the newest file
    of a master that is alive, else the newest file.
    """
    directory = state_dir if state_dir is not None else default_state_dir()
    if server is not None:
        path = status_path(directory, server)
        data = read_status(path)
        return _annotate(data, path) if data is not None else None
    mine = status_path(directory, short_hostname())
    data = read_status(mine)
    if data is not None:
        return _annotate(data, mine)
    found = local_masters(directory)
    found.sort(key=lambda d: (d["master_alive"], _number(d.get("written_at"))), reverse=True)
    return found[0] if found else None


def local_masters(state_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every readable status file of the state directory, annotated as by ``local_status``."""
    directory = state_dir if state_dir is not None else default_state_dir()
    masters = []
    for path in sorted(directory.glob(STATUS_GLOB)):
        data = read_status(path)
        if data is not None:
            masters.append(_annotate(data, path))
    return masters


def render_log_health(health: object) -> str | None:
    """``logging: ...`` when log lines were dropped (a full or broken log disk), else None."""
    if not isinstance(health, dict):
        return None
    dropped, failing = health.get("dropped"), health.get("failing")
    if not failing and not dropped:
        return None
    counts = (f"{dropped} line(s) dropped since the start (master {health.get('master_dropped')},"
              f" workers {health.get('workers_dropped')})")
    if failing:
        return f"logging: FAILING ({failing}); {counts}"
    return f"logging: writing again; {counts}"


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _aged(value: object, age: float, sign: int) -> float | None:
    """A "seconds from the write" figure moved to now (``sign`` +1: an age, -1: a delay)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) + sign * age


def render_local_status(data: dict[str, Any], now: float | None = None) -> str:
    """The local master's workers (what each runs) and scripts (next due), as text."""
    now = time.time() if now is None else now
    age = max(0.0, now - _number(data.get("written_at")))
    alive = data.get("master_alive", True)
    head = f"master {data.get('server', '?')} pid {data.get('pid', '?')}"
    if alive:
        head += f", up {span(_aged(data.get('started_ago'), age, +1))}"
        if data.get("stopping"):
            head += ", stopping"
        if data.get("draining"):
            head += ", DRAINING (no new sync lease taken here)"
    else:
        head += " is not running"
    lines = [f"{head} (status written {span(age)} ago)"]
    database = data.get("database")
    if isinstance(database, dict):
        state = "available" if database.get("available") else "UNAVAILABLE"
        down_for = database.get("down_for")
        if isinstance(down_for, int | float):
            state += f" for {span(down_for)}"
        lines.append(f"database: {state}, {database.get('pending_history', 0)} history row(s)"
                     " waiting to be written")
    logging_line = render_log_health(data.get("logging"))
    if logging_line:
        lines.append(logging_line)
    workers = [w for w in data.get("workers") or [] if isinstance(w, dict)]
    lines.append("")
    lines.append(f"workers ({len(workers)} of n_proc {data.get('n_proc', '?')}):")
    rows = [["WORKER", "PID", "STATE", "RUNNING", "FOR", "AGE"]]
    for w in workers:
        script = w.get("script")
        rows.append([str(w.get("index", "?")), str(w.get("pid", "-")), str(w.get("state", "?")),
                     f"{script} run {w.get('run')}" if script else "-",
                     span(_aged(w.get("running_for"), age, +1)) if script else "-",
                     span(_aged(w.get("age"), age, +1))])
    lines.extend("  " + line for line in table(rows))
    scripts = [s for s in data.get("scripts") or [] if isinstance(s, dict)]
    lines.append("")
    lines.append(f"scripts ({len(scripts)}):")
    rows = [["SCRIPT", "PERIOD", "SYNC", "NEXT DUE", "LAST OUTCOME"]]
    for s in scripts:
        if s.get("paused"):
            reason = f": {s['paused_reason']}" if s.get("paused_reason") else ""
            due = f"PAUSED by {s.get('paused_by')}{reason}"
        elif s.get("disabled"):
            due = f"not scheduled: {s['disabled']}"
        elif s.get("running"):
            due = "running now"
        else:
            left = _aged(s.get("next_due_in"), age, -1)
            due = "-" if left is None else ("now" if left <= 0 else f"in {span(left)}")
        if s.get("crash_looping"):
            due = f"CRASH-LOOPING ({s.get('crashes', 0)} crashes), {due}"
        elif s.get("backoff_left"):
            due = f"backed off {span(_aged(s.get('backoff_left'), age, -1))}, {due}"
        last = s.get("last_outcome")
        ended = _aged(s.get("last_ended_ago"), age, +1)
        rows.append([str(s.get("name", "?")), _schedule(s),
                     "yes" if s.get("sync") else "no", due,
                     f"{last} {span(ended)} ago" if last else "-"])
    lines.extend("  " + line for line in table(rows))
    lines.extend(_contention_lines(scripts, age))
    return "\n".join(lines) + "\n"


def _schedule(s: dict[str, Any]) -> str:
    """The PERIOD column: a period, or a cron schedule with its zone and next firing."""
    if not s.get("cron"):
        return span(_number(s.get("period")))
    text = f"cron {s['cron']} ({s.get('timezone') or 'UTC'})"
    firing = _number(s.get("next_firing"))
    if firing is not None:
        text += f", next {firing_text(firing, str(s.get('timezone') or 'UTC'))}"
    return text


def _contention_lines(scripts: list[dict[str, Any]], age: float) -> list[str]:
    """Sync scripts whose lease was refused here since the master started (no history row
    is written for a refusal; the fleet-wide count is on the lease: ``panda-daemon locks``)."""
    rows = [["SCRIPT", "REFUSED", "HELD ELSEWHERE", "LAST HOLDER", "LATEST REFUSAL"]]
    for s in scripts:
        c = s.get("contention")
        if not isinstance(c, dict) or not c.get("refused"):
            continue
        holder = c.get("holder")
        seen = _aged(c.get("holder_ago"), age, +1)
        rows.append([str(s.get("name", "?")), str(c.get("refused")),
                     str(c.get("held_elsewhere", 0)),
                     f"{holder} {span(seen)} ago" if holder else "-",
                     f"{span(_aged(c.get('last_ago'), age, +1))} ago"])
    if len(rows) == 1:
        return []
    return ["", "sync leases refused here since the start (another server ran them):",
            *("  " + line for line in table(rows))]

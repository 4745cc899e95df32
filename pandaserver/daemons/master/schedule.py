"""Pure scheduling decisions.

Every function takes ``now`` (monotonic seconds) as an argument and never reads a clock,
so tests drive it with plain numbers.

Semantics:
- A script is due at ``next_due``; it never starts earlier.
- No drift: each script runs on a grid of its period anchored on its first run's start.
  A run on time (late by at most ``due_tolerance(period)`` = ``min(1 s, period / 10)``)
  is next due one period after its *due* time (not after the moment the master got round
  to it), so a run handed over 3 ms late does not push every later run by 3 ms. Scripts
  that all became due together (at start-up, say) and had to queue for workers are
  anchored on their first starts, so they keep the spread the queue gave them instead of
  colliding again every period. A later run (it waited for a worker, or an overrun)
  counts its period from its start less the tolerance: consecutive runs are never closer
  than ``period - tolerance``, and missed periods are skipped, never run in a burst. (A
  sync script's due time is kept fleet-wide by its lease row with the same rule, see
  db/stores/leasegrant.py.)
- A script never runs twice at once on one server: a running script is not due.
- A run that outlasts its period leaves ``next_due`` in the past, so the script runs once
  right after the overrun ends, then counts its period from that start.
- A ``cron`` script is due at its firings (wall-clock instants, ``config/cronspec.py``):
  ``firing`` is the one it waits for, and the timetable maps it onto the monotonic clock
  (``Timetable.rebase``). After a run the next firing is the first after both the one run
  and the start, so missed firings are skipped, never run in a burst, and a clock stepped
  back never brings a served firing round again. The wall-clock functions below take the
  instant as POSIX seconds, like ``now``, and never read a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pandaserver.config.cronspec import CronSchedule
from pandaserver.config.scripts import DaemonSpec
from pandaserver.db.direct.duerule import due_tolerance

REMOVED = "removed from the configuration by a reload"  # a ``disabled`` reason
LATE_FLOOR = 300.0  # seconds: a script later than max(this, period / 2) is reported
LATE_FLOOR_VARIABLE = "PANDA_DAEMON_LATE_FLOOR"
# a run that ends this little past its period did not overrun it (a loop run stops at its
# period, after the call that crossed it): 0.1 s, or 1 % of a period longer than 10 s
OVERRUN_TOLERANCE = 0.1
OVERRUN_TOLERANCE_SHARE = 0.01


@dataclass(eq=False)
class ScriptState:
    """What the master knows of one script (it owns these; workers are stateless).

    Plain data. Inside the master the ``Timetable`` holding a state is its one writer
    (``timetable.py``): every change goes through one of its methods, which keeps the
    due-time heaps in step, so nothing needs to watch the fields.
    """

    spec: DaemonSpec
    next_due: float
    running: int | None = None  # run id while a run is in progress
    run_started: float | None = None
    late_warned_for: float | None = None  # the due time already warned about
    disabled: str | None = None  # why it cannot run (e.g. its module does not import)
    acquiring: bool = False  # a sync script whose lease request is in flight
    anchored: bool = False  # its grid is set (by its first run's start)
    firing: float | None = None  # a cron script: the firing it is due for (POSIX seconds)

    @property
    def waiting(self) -> bool:
        return self.running is None and self.disabled is None and not self.acquiring


def first_due(now: float) -> float:
    """Every script runs once at start-up."""
    return now


def first_firing(cron: CronSchedule, wall: float, sync: bool) -> float:
    """The firing a cron script waits for when it is added at the wall-clock instant
    ``wall``: the next one; a sync script asks for the latest that has come (the fleet's
    lease row says whether it was served, and refuses it then), so a firing the whole fleet
    missed while it was down is run once, late."""
    if sync:
        latest = cron.latest_at(wall)
        if latest is not None:
            return latest
    return cron.next_after(wall)


def firing_to_ask(cron: CronSchedule, firing: float, db_now: float) -> float:
    """The firing a sync cron script asks its lease for at ``db_now`` (the database's clock,
    as this master estimates it): the one it waits for, or the latest that has come if
    later ones have (missed firings are skipped, never run in a burst)."""
    latest = cron.latest_at(db_now)
    return firing if latest is None or latest <= firing else latest


def next_firing_after_start(cron: CronSchedule, firing: float | None, wall: float,
                            granted: float | None = None) -> float:
    """The firing a cron script waits for after a run started at the wall-clock instant
    ``wall``: after a lease ``granted`` for a firing, the one after it; else the one it
    waited for if that is still ahead (an operator's run-now serves no firing), else the
    first after the start (the one served, and any missed)."""
    if granted is not None:
        return cron.next_after(granted)
    if firing is not None and firing > wall:
        return firing
    return cron.next_after(wall)


def firing_after_refusal(cron: CronSchedule, firing: float, served: float | None) -> float:
    """The firing a sync cron script waits for after its lease for ``firing`` was refused:
    the one after the latest the fleet ``served`` when that is ``firing`` or later (None:
    the answer did not say), else ``firing`` still."""
    if served is not None and served >= firing:
        return cron.next_after(served)
    return firing


def due_scripts(states: Iterable[ScriptState], now: float) -> list[ScriptState]:
    """Scripts that may start now, oldest due time first (ties broken by name)."""
    ready = [s for s in states if s.waiting and s.next_due <= now]
    ready.sort(key=lambda s: (s.next_due, s.spec.name))
    return ready


def next_due_after_start(started: float, period: float) -> float:
    """The first due time of a grid anchored on a first run started at ``started``."""
    return started + period


def next_due_on_grid(due: float, period: float, started: float) -> float:
    """The next due time of a run due at ``due`` that started at ``started``: one period
    after ``due`` when it started on time (late by at most ``due_tolerance(period)``: the
    grid is kept, no drift), else one period after its start less that tolerance (the
    period counts from the run; missed periods are skipped, never run in a burst). So
    consecutive runs are never closer than ``period - due_tolerance(period)``; the lease
    grant applies the same rule fleet-wide (``db/base/servertime.py``)."""
    return max(due + period, started + period - due_tolerance(period))


def next_due_after_dispatch(state: ScriptState, started: float) -> float:
    """Where a run handed over at ``started`` puts its script's next due time: the first
    run anchors the grid, later ones follow it."""
    if not state.anchored:
        return next_due_after_start(started, state.spec.period)
    return next_due_on_grid(state.next_due, state.spec.period, started)


def overrun(started: float, ended: float, period: float) -> float:
    """Seconds by which a run outlasted its period, reported as an overrun; 0 when it ended
    within ``OVERRUN_TOLERANCE`` of its period (a loop run ends at its period by design)."""
    over = (ended - started) - period
    return over if over > max(OVERRUN_TOLERANCE, period * OVERRUN_TOLERANCE_SHARE) else 0.0


def late_threshold(period: float, floor: float = LATE_FLOOR) -> float:
    """A script delayed longer than this past its due time is reported."""
    return max(floor, period / 2)


def late_floor_from_env(environ: Mapping[str, str]) -> float:
    """``PANDA_DAEMON_LATE_FLOOR`` (seconds, default 300) lowers the floor of the late
    warning: a diagnostic knob, so tests see the warning without waiting five minutes."""
    text = environ.get(LATE_FLOOR_VARIABLE)
    if text is None:
        return LATE_FLOOR
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{LATE_FLOOR_VARIABLE} must be a positive number of seconds,"
                         f" got: {text!r}")
    return value


def late_to_warn(states: Iterable[ScriptState], now: float,
                 floor: float = LATE_FLOOR) -> list[ScriptState]:
    """Due scripts (waiting for a worker, or still running) that just crossed the threshold."""
    found = []
    for state in states:
        if state.disabled is not None or state.late_warned_for == state.next_due:
            continue
        if now - state.next_due > late_threshold(state.spec.period, floor):
            found.append(state)
    return found


def next_wakeup(states: Iterable[ScriptState], now: float,
                floor: float = LATE_FLOOR) -> float | None:
    """The earliest future moment at which a scheduling decision may change."""
    times: list[float] = []
    for state in states:
        if state.disabled is not None:
            continue
        if state.running is None and not state.acquiring:
            times.append(state.next_due)
        if state.late_warned_for != state.next_due:
            times.append(state.next_due + late_threshold(state.spec.period, floor))
    future = [t for t in times if t > now]
    return min(future) if future else None

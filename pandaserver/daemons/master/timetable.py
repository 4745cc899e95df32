"""The master's scripts, kept in due-time heaps: what is due and when to wake up next cost
O(log n) per change, not a scan of every configured script per event.

Pure: no clock is read; every method that decides takes ``now``. A ``Timetable`` is the
mapping ``name -> ScriptState`` the master holds, and the one writer of the states it
holds: every change of a scheduling field goes through one of its methods (``set_due``,
``asking``, ``answered``, ``started``, ``finished``, ``disable``, ``enable``, ``respec``),
which pushes a heap entry when the change makes the script wait for a new due time (or
late-warning time). Entries are never removed from the middle of a heap: an entry is valid
while it matches the latest key pushed for its script, and stale ones are dropped when they
reach the top (the heap is rebuilt when stale entries outnumber the scripts).

Cron scripts (``spec.cron``) wait for a wall-clock ``firing``; their ``next_due`` is that
firing mapped onto the monotonic clock by ``offset`` (wall minus monotonic, read by the
dispatcher) and, for sync scripts, ``skew`` (the database's clock minus this server's wall
clock, learned from lease answers). ``rebase`` re-maps them when either moves by more than
a step (an NTP step, a first lease answer): the firings stay, so a step moves the due times
with it and never makes a served firing due again.

Order and semantics are those of ``schedule.due_scripts``, ``schedule.late_to_warn`` and
``schedule.next_wakeup``, which stay the reference (and the unit tests compare the two).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, MutableMapping
from types import MappingProxyType

from pandaserver.config.scripts import DaemonSpec
from pandaserver.daemons.master.schedule import (
    LATE_FLOOR,
    ScriptState,
    first_firing,
    late_threshold,
)

Entry = tuple[float, str]
CLOCK_STEP = 0.5  # seconds: wall minus monotonic moving more than this is a clock step
SKEW_STEP = 0.25  # seconds: a change of the database's clock skew worth re-mapping for


class Timetable(MutableMapping[str, ScriptState]):
    def __init__(self, states: Mapping[str, ScriptState] | None = None,
                 floor: float = LATE_FLOOR) -> None:
        self.floor = floor
        self._states: dict[str, ScriptState] = {}
        self._due: list[Entry] = []  # waiting scripts by due time
        self._ready: list[Entry] = []  # the due ones (time <= a past ``now``), same order
        self._due_key: dict[str, float] = {}
        self._late: list[Entry] = []  # late-warning times of scripts not yet warned
        self._late_key: dict[str, float] = {}
        self.version = 0  # bumped by every change (the status file's cheap signature)
        self.offset: float | None = None  # wall minus monotonic clock (cron scripts)
        self.skew = 0.0  # the database's clock minus the wall clock (sync cron scripts)
        self._cron: set[str] = set()  # names of the cron scripts
        # sync cron scripts start from the latest firing (the fleet's lease says whether it
        # was served); without a fleet (no shared database) from the next, like the others
        self.catch_up = True
        # the others: what a previous master on this host waited for (its status file:
        # name -> expression, zone, firing), so a firing missed while it was down runs once
        self.remembered: dict[str, tuple[str, str, float]] = {}
        for name, state in (states or {}).items():
            self[name] = state

    # ----- the mapping ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> ScriptState:
        return self._states[name]

    def __setitem__(self, name: str, state: ScriptState) -> None:
        """Add a script, due at ``state.next_due``; a cron script: at its first firing
        after that moment (``rebase`` must have set the offset)."""
        self._states[name] = state
        self._due_key.pop(name, None)
        self._late_key.pop(name, None)
        self._cron.discard(name)
        if state.spec.cron is not None:
            self._place(state)
        self.touch(state)

    def __delitem__(self, name: str) -> None:
        self._cron.discard(name)
        self._states.pop(name)
        self._due_key.pop(name, None)
        self._late_key.pop(name, None)
        self.version += 1

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def states(self) -> Mapping[str, ScriptState]:
        """The scripts as a read-only view of the underlying dict (for copies at C speed:
        the mapping's own ``keys()``/``values()`` go through Python-level calls)."""
        return MappingProxyType(self._states)

    # ----- cron scripts: wall-clock firings on the monotonic clock ---------------------------
    @property
    def has_cron(self) -> bool:
        return bool(self._cron)

    def due_of(self, state: ScriptState, firing: float) -> float:
        """The monotonic time of the wall-clock instant ``firing`` for ``state`` (by the
        database's clock for a sync script)."""
        assert self.offset is not None, "rebase() sets the clock offset before cron scripts"
        return firing - self.offset - (self.skew if state.spec.sync else 0.0)

    def wall_of(self, state: ScriptState, now: float) -> float:
        """The wall-clock instant (the database's, for a sync script) of monotonic ``now``."""
        assert self.offset is not None, "rebase() sets the clock offset before cron scripts"
        return now + self.offset + (self.skew if state.spec.sync else 0.0)

    def _place(self, state: ScriptState) -> None:
        cron = state.spec.cron
        assert cron is not None
        self._cron.add(state.spec.name)
        if state.firing is None:
            wall = self.wall_of(state, state.next_due)
            fleet = state.spec.sync and self.catch_up
            state.firing = first_firing(cron, wall, fleet)
            before = self.remembered.pop(state.spec.name, None)
            if not fleet and before is not None and before[:2] == (cron.expression, cron.zone) \
                    and before[2] <= wall:  # missed while no master ran: once, late
                state.firing = cron.latest_at(wall) or before[2]
        state.next_due = self.due_of(state, state.firing)

    def rebase(self, offset: float, skew: float | None = None) -> bool:
        """The clocks now read ``offset`` (wall minus monotonic) and ``skew`` (the database
        minus the wall clock; None: unchanged). A move past ``CLOCK_STEP`` (``SKEW_STEP``)
        re-maps every cron script's due time from its firing; True when it did."""
        moved = self.offset is None or abs(offset - self.offset) > CLOCK_STEP
        if moved:
            self.offset = offset
        if skew is not None and abs(skew - self.skew) > SKEW_STEP:
            self.skew = skew
            moved = True
        if moved:
            for name in self._cron:
                state = self._states[name]
                if state.firing is not None and not state.acquiring:
                    state.next_due = self.due_of(state, state.firing)
                    self.touch(state)
        return moved

    def learn_skew(self, db_now: float, at: float) -> None:
        """A lease answer showed the database's clock at ``db_now`` (POSIX seconds) at the
        monotonic moment ``at``: sync cron firings are timed by it, whatever this server's
        wall clock says."""
        if self.offset is not None:
            self.rebase(self.offset, db_now - (at + self.offset))

    # ----- the one writer of the scheduling fields -------------------------------------------
    def set_due(self, state: ScriptState, when: float, firing: float | None = None) -> None:
        """``state`` is next due at ``when`` (a cron script: for ``firing``, if given)."""
        state.next_due = when
        if firing is not None:
            state.firing = firing
        self.touch(state)

    def asking(self, state: ScriptState, due: float, firing: float | None = None) -> None:
        """A sync script's lease is being asked for the due time ``due`` (a cron script:
        for its ``firing``)."""
        state.next_due = due
        state.acquiring = True
        if firing is not None:
            state.firing = firing
        self.touch(state)

    def answered(self, state: ScriptState, next_due: float | None = None,
                 firing: float | None = None) -> None:
        """The lease answer came back; refused: due again at ``next_due`` (a cron script:
        waiting for ``firing``, if given)."""
        state.acquiring = False
        if next_due is not None:
            state.next_due = next_due
        if firing is not None:
            state.firing = firing
        self.touch(state)

    def started(self, state: ScriptState, run_id: int, now: float, next_due: float,
                firing: float | None = None) -> None:
        """Run ``run_id`` was handed to a worker at ``now``; the grid is set (a cron
        script: it waits for ``firing`` next)."""
        state.running = run_id
        state.run_started = now
        state.next_due = next_due
        state.anchored = True
        if firing is not None:
            state.firing = firing
        self.touch(state)

    def finished(self, state: ScriptState) -> None:
        state.running = None
        self.touch(state)

    def disable(self, state: ScriptState, why: str) -> None:
        state.disabled = why
        self.touch(state)

    def enable(self, state: ScriptState) -> None:
        state.disabled = None
        self.touch(state)

    def respec(self, state: ScriptState, spec: DaemonSpec, next_due: float | None = None,
               enable: bool = False) -> None:
        """A reload changed the script's spec (and maybe its due time). A new schedule of a
        cron script starts from its next firing (its due time is the firing's)."""
        if enable:
            state.disabled = None
        if next_due is not None:
            state.next_due = next_due
        rescheduled = spec.cron != state.spec.cron or spec.sync != state.spec.sync
        state.spec = spec
        self._cron.discard(spec.name)
        if spec.cron is not None:
            if rescheduled:  # placed from ``next_due``: the reload's ``now``
                state.firing = None
            self._place(state)
        elif rescheduled:
            state.firing = None
        self.touch(state)

    # ----- keeping the heaps ----------------------------------------------------------------
    def touch(self, state: ScriptState) -> None:
        """A state changed (through the writers above): push what its new due and
        late-warning times are, if new."""
        name = state.spec.name
        if self._states.get(name) is not state:
            return
        self.version += 1
        if state.waiting:
            if self._due_key.get(name) != state.next_due:
                self._due_key[name] = state.next_due
                heapq.heappush(self._due, (state.next_due, name))
        else:
            self._due_key.pop(name, None)
        if state.disabled is None and state.late_warned_for != state.next_due:
            at = state.next_due + late_threshold(state.spec.period, self.floor)
            if self._late_key.get(name) != at:
                self._late_key[name] = at
                heapq.heappush(self._late, (at, name))
        else:
            self._late_key.pop(name, None)
        if len(self._due) + len(self._ready) + len(self._late) > 4 * len(self._states) + 64:
            self._compact()

    def _compact(self) -> None:
        self._due = [e for e in self._due if self._due_key.get(e[1]) == e[0]]
        self._ready = [e for e in self._ready if self._due_key.get(e[1]) == e[0]]
        self._late = [e for e in self._late if self._late_key.get(e[1]) == e[0]]
        for heap in (self._due, self._ready, self._late):
            heapq.heapify(heap)

    def _valid_due(self, entry: Entry) -> bool:
        return self._due_key.get(entry[1]) == entry[0]

    def _move_ready(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            if self._valid_due(entry):
                heapq.heappush(self._ready, entry)

    # ----- decisions ------------------------------------------------------------------------
    def pop_due(self, now: float) -> ScriptState | None:
        """The waiting script due earliest (ties by name) if it is due at ``now``; it leaves
        the heap (call ``requeue`` if it could not be handed over after all)."""
        self._move_ready(now)
        while self._ready:
            entry = heapq.heappop(self._ready)
            if self._valid_due(entry):
                del self._due_key[entry[1]]
                return self._states[entry[1]]
        return None

    def requeue(self, state: ScriptState) -> None:
        """Put back a state taken by ``pop_due`` and left waiting."""
        self._due_key.pop(state.spec.name, None)
        self.touch(state)

    def late_to_warn(self, now: float) -> list[ScriptState]:
        """Scripts that just crossed their late threshold, each once per due time (marked
        warned for it: ``late_warned_for``)."""
        found = []
        while self._late and self._late[0][0] < now:
            at, name = heapq.heappop(self._late)
            if self._late_key.get(name) == at:
                del self._late_key[name]
                state = self._states[name]
                state.late_warned_for = state.next_due
                self.version += 1
                found.append(state)
        return found

    def any_due(self, now: float) -> bool:
        """Whether a waiting script is due at ``now`` (it waits for a worker)."""
        self._move_ready(now)
        while self._ready and not self._valid_due(self._ready[0]):
            heapq.heappop(self._ready)
        return bool(self._ready)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest future moment at which a decision may change (due times already
        passed wait for a worker; the loop is woken by the worker instead)."""
        self._move_ready(now)
        times = []
        while self._due and not self._valid_due(self._due[0]):
            heapq.heappop(self._due)
        if self._due:
            times.append(self._due[0][0])
        while self._late and self._late_key.get(self._late[0][1]) != self._late[0][0]:
            heapq.heappop(self._late)
        for at, _ in self._late[:1]:
            # a late one not warned yet (crossed since the last check): very soon
            times.append(at if at > now else now + 0.001)
        return min(times) if times else None

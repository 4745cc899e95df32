"""Worker states and the transitions the master may make between them."""

from __future__ import annotations

from enum import Enum


class WorkerState(Enum):
    STARTING = "starting"  # spawned, importing script modules
    IDLE = "idle"  # ready for an assignment
    BUSY = "busy"  # running one assignment
    RETIRING = "retiring"  # busy, and will exit after this run (lifetime reached or stopping)
    EXITING = "exiting"  # asked to exit
    KILLING = "killing"  # its tree got SIGTERM; SIGKILL follows after a grace


ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.EXITING, WorkerState.KILLING}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.EXITING, WorkerState.KILLING}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.RETIRING, WorkerState.KILLING}),
    WorkerState.RETIRING: frozenset({WorkerState.EXITING, WorkerState.KILLING}),
    WorkerState.EXITING: frozenset({WorkerState.KILLING}),
    WorkerState.KILLING: frozenset(),
}


class TransitionError(Exception):
    pass


def check_transition(old: WorkerState, new: WorkerState) -> WorkerState:
    if new not in ALLOWED[old]:
        raise TransitionError(f"worker cannot go from {old.value} to {new.value}")
    return new

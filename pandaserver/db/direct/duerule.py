"""How late a run may start and keep its grid: the one rule of the next due time, shared by
the master's own schedule (``pandaserver/daemons/master/schedule.py``) and the lease grant
(``next_due_after`` in ``pandaserver/db/base/servertime.py``). Plain arithmetic, in a module
of its own so that the master's schedule imports no SQLAlchemy.
"""

from __future__ import annotations

DUE_TOLERANCE = 1.0  # seconds: the most a run may start late and still keep its grid ...
DUE_TOLERANCE_PARTS = 10  # ... and at most this part of its period (a tenth)


def due_tolerance(period: float) -> float:
    """How late a run may start and still keep its grid: ``min(1 s, period / 10)``.

    The one rule for the next due time after a start, applied by the master to its own
    scripts (``daemons/master/schedule.py``) and by the lease grant to sync scripts
    fleet-wide (``next_due_after`` in servertime.py): a run due at ``due`` that starts at ``started``
    is next due at ``max(due + period, started + period - due_tolerance(period))``. A run
    on time (late by at most the tolerance) keeps its grid; a later one, a first one, or
    one after an idle fleet counts its period from its own start (less the tolerance). So
    two consecutive runs are never closer than ``period - due_tolerance(period)``.
    """
    return min(DUE_TOLERANCE, period / DUE_TOLERANCE_PARTS)

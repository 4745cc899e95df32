"""Distinct values of ``daemon_run`` found by skipping through an index, not by reading it.

``SELECT DISTINCT script`` (or a ``GROUP BY``) reads every row or index entry: with a year
of history, millions. A recursive CTE that asks, one step at a time, for the smallest value
greater than the last one found makes one index probe per distinct value instead (a "loose
index scan"): a few hundred scripts, a few thousand (script, server) pairs. Portable: only
scalar subqueries (``min``) in the recursive step, which PostgreSQL, SQLite and
MySQL/MariaDB all accept, each answered from the leading columns of an index.

- ``scripts()``: every script in the history (index ``(script, started_at, id)``);
- ``newest_per_pair()``: per (script, server), its newest run that is not a ``skipped``
  attempt (the partial index ``(script, server, started_at, id) WHERE outcome <>
  'skipped'``, walked backwards from one pair's newest entry to the previous pair's).

``scripts()`` ends with one NULL row (the step after the last value); callers filter it out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CTE, ColumnElement, func, literal_column, select

from pandaserver.db.base.tables import daemon_run


def not_skipped(table: Any) -> ColumnElement[bool]:
    """``outcome <> 'skipped'`` on ``table`` (``daemon_run`` or an alias of it)."""
    column: ColumnElement[str] = table.c.outcome
    return column != literal_column("'skipped'")


def scripts(name: str = "scripts") -> CTE:
    """A CTE of one column, ``script``: each script of the history once, then NULL."""
    r0 = daemon_run.alias("s0")
    found = select(func.min(r0.c.script).label("script")).cte(name, recursive=True)
    r1 = daemon_run.alias("s1")
    after = select(func.min(r1.c.script)).where(r1.c.script > found.c.script).scalar_subquery()
    return found.union_all(select(after).where(found.c.script.is_not(None)))


def newest_per_pair(name: str = "pairs", script: str | None = None) -> CTE:
    """A CTE of (``script``, ``server``, ``id``): per (script, server) with a run that is not
    a skipped attempt, the id of its newest such run (the later id of two at the same
    instant), walking the partial index backwards: each step is one probe (two when it moves
    to the previous script) for the newest entry of the pair just before the last one
    found, and one read of that row by id. With ``script``, that script's pairs only (one
    probe per server of that script)."""
    r0, r1 = daemon_run.alias("p0"), daemon_run.alias("p1")
    newest_first = (r0.c.script.desc(), r0.c.server.desc(), r0.c.started_at.desc(),
                    r0.c.id.desc())
    only = [r0.c.script == script] if script is not None else []
    seed_id = select(r0.c.id).where(*only, not_skipped(r0)).order_by(*newest_first).limit(1)
    seed = select(r1.c.script, r1.c.server, r1.c.id).where(r1.c.id == seed_id.scalar_subquery())
    found = seed.cte(name, recursive=True)
    r2, r3, r4 = daemon_run.alias("p2"), daemon_run.alias("p3"), daemon_run.alias("p4")

    def newest_where(r: Any, *where: ColumnElement[bool]) -> Any:
        return (select(r.c.id).where(*where, not_skipped(r))
                .order_by(r.c.script.desc(), r.c.server.desc(), r.c.started_at.desc(),
                          r.c.id.desc())
                .limit(1).correlate(found).scalar_subquery())

    # the previous server of the same script, else the last server of the previous script:
    # two plain range seeks (a row-value comparison would be one, but SQLite seeks on its
    # first column only and then reads the whole pair)
    previous = newest_where(r2, r2.c.script == found.c.script, r2.c.server < found.c.server)
    if script is None:
        previous = func.coalesce(previous, newest_where(r4, r4.c.script < found.c.script))
    step = select(r3.c.script, r3.c.server, r3.c.id).select_from(
        found.join(r3, r3.c.id == previous))
    return found.union_all(step)

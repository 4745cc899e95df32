"""Distinct values of ``daemon_run`` found by skipping through an index, not by reading it.

``SELECT DISTINCT script`` (or a ``GROUP BY``) reads every row or index entry: with a year
of history, millions. A recursive CTE that asks, one step at a time, for the smallest value
greater than the last one found makes one index probe per distinct value instead (a "loose
index scan"): a few hundred scripts, a few thousand (script, server) pairs. Portable: only
scalar subqueries (``min``) in the recursive step, which PostgreSQL, SQLite and
MySQL/MariaDB all accept, each answered from the leading columns of an index.

- ``scripts()``: every script in the history (index ``(script, started_at, id)``);
- ``run_pairs()``: every (script, server) with a run that is not a ``skipped`` attempt
  (the partial index ``(script, server, started_at, id) WHERE outcome <> 'skipped'``).

Both CTEs end with one NULL row (the step after the last value); callers filter it out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CTE, ColumnElement, and_, case, func, literal_column, select

from pandaserver.db.tables import daemon_run


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


def run_pairs(name: str = "pairs") -> CTE:
    """A CTE of (``script``, ``server``): each pair with a run that is not a skipped attempt,
    in order, then one (NULL, NULL) row."""
    r0, r1 = daemon_run.alias("p0"), daemon_run.alias("p1")
    first_script = select(func.min(r0.c.script)).where(not_skipped(r0)).scalar_subquery()
    first_server = (select(func.min(r1.c.server))
                    .where(r1.c.script == first_script, not_skipped(r1)).scalar_subquery())
    found = select(first_script.label("script"), first_server.label("server")
                   ).cte(name, recursive=True)

    def next_server() -> Any:  # the next server of the same script
        r = daemon_run.alias()
        return (select(func.min(r.c.server))
                .where(r.c.script == found.c.script, r.c.server > found.c.server, not_skipped(r))
                .correlate(found).scalar_subquery())

    def next_script() -> Any:
        r = daemon_run.alias()
        return (select(func.min(r.c.script)).where(r.c.script > found.c.script, not_skipped(r))
                .correlate(found).scalar_subquery())

    def its_first_server() -> Any:  # the first server of the next script
        r = daemon_run.alias()
        return (select(func.min(r.c.server))
                .where(r.c.script == next_script(), not_skipped(r)).correlate(found)
                .scalar_subquery())

    step = select(
        case((next_server().is_(None), next_script()), else_=found.c.script).label("script"),
        func.coalesce(next_server(), its_first_server()).label("server"),
    ).where(and_(found.c.script.is_not(None), found.c.server.is_not(None)))
    return found.union_all(step)

"""Times, durations and tables as people read them (pages, ``fleet``, ``status``,
``history``, ``locks``, ``check-config``)."""

from __future__ import annotations

from datetime import datetime


def span(value: float | None) -> str:
    """A number of seconds, short: ``12ms``, ``4.2s``, ``12m``, ``3.5h``, ``2.0d`` (``-`` for
    None)."""
    if value is None:
        return "-"
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value < 1:
        return f"{sign}{value * 1000:.0f}ms"
    if value < 100:
        return f"{sign}{value:.1f}s"
    if value < 6000:
        return f"{sign}{value / 60:.0f}m"
    if value < 172800:
        return f"{sign}{value / 3600:.1f}h"
    return f"{sign}{value / 86400:.1f}d"


def relative(value: float | None) -> str:
    """Seconds from now: ``in 4.2s`` or ``4.2s ago``."""
    if value is None:
        return "-"
    return f"in {span(value)}" if value > 0 else f"{span(-value)} ago"


def when(value: datetime | None) -> str:
    """A UTC time, to the second."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def offset(value: float | None) -> str:
    """A clock offset with its sign (``+0.004s``), ``?`` when unknown."""
    if value is None:
        return "?"
    return f"{value:+.3f}s" if abs(value) < 100 else ("+" if value > 0 else "-") + span(abs(value))


def table(rows: list[list[str]]) -> list[str]:
    """Rows (the first one the header) as lines of left-aligned columns."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]

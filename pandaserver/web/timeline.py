"""A script's runs as an inline SVG, drawn on the server (no JavaScript, no external asset).

Above: one lane per server, a bar per run from its start to its end (at least 2 px wide),
a thin tick per ``skipped`` row (written by older versions; a refused lease attempt is no
longer a history row). Below, on the same time axis: each run's duration as a
dot. Colours come from the page's stylesheet through classes (``outcome-ok`` ...), and
every mark carries ``data-*`` attributes (run id, server, outcome, duration) and a
``<title>`` tooltip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape as _escape

from pandaserver.config.secrets import redact
from pandaserver.db.stores.runrecords import RUNNING, SKIPPED, RunRow

WIDTH = 960
LEFT = 130
RIGHT = 16
TOP = 26
LANE = 24
GAP = 28
PANEL = 110
MIN_SPAN = 10.0  # seconds shown at least
PAD = 0.03  # of the span, before the first run
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400, 172800, 604800)


def escape(value: str) -> str:
    """Every text the timeline shows (tooltips, lanes, labels): redacted, then escaped."""
    return _escape(redact(value))


def _fmt_tick(t: float, span: float) -> str:
    moment = datetime.fromtimestamp(t, UTC)
    return moment.strftime("%H:%M:%S" if span < 86400 else "%m-%d %H:%M")


def _step(span: float) -> int:
    for step in NICE_STEPS:
        if span / step <= 8:
            return step
    return NICE_STEPS[-1]


def _num(value: float) -> str:
    return f"{value:.1f}"


def _duration_text(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def timeline_svg(runs: Sequence[RunRow], now: datetime, name: str) -> str:
    """The SVG of ``runs`` of script ``name`` up to ``now`` (the database's)."""
    servers = sorted({run.server for run in runs})
    end = now.timestamp()
    first = min((run.started_at.timestamp() for run in runs), default=end)
    span = max(MIN_SPAN, (end - first) * (1 + PAD))
    start = end - span
    plot = WIDTH - LEFT - RIGHT
    lanes_bottom = TOP + LANE * max(1, len(servers))
    panel_top = lanes_bottom + GAP
    height = panel_top + PANEL + 22

    def x(t: float) -> float:
        return LEFT + (t - start) / span * plot

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" class="timeline"'
             f' viewBox="0 0 {WIDTH} {height}" width="100%" role="img"'
             f' aria-label="runs of {escape(name)} per server and their durations">']
    step = _step(span)
    first_tick = int(start // step + 1) * step
    for tick in range(first_tick, int(end) + 1, step):
        tx = _num(x(tick))
        parts.append(f'<line class="grid" x1="{tx}" y1="{TOP - 4}" x2="{tx}"'
                     f' y2="{panel_top + PANEL}"/>')
        parts.append(f'<text class="tick" x="{tx}" y="{TOP - 10}" text-anchor="middle">'
                     f'{_fmt_tick(tick, span)}</text>')
    lane_of = {server: i for i, server in enumerate(servers)}
    for server, i in lane_of.items():
        y = TOP + i * LANE
        parts.append(f'<rect class="lane" x="{LEFT}" y="{y}" width="{plot}" height="{LANE - 4}"/>')
        parts.append(f'<text class="lane-label" x="{LEFT - 8}" y="{y + LANE / 2 + 2}"'
                     f' text-anchor="end">{escape(server)}</text>')
    longest = max((run.duration or 0.0 for run in runs if run.outcome != SKIPPED), default=0.0)
    ceiling = max(longest * 1.1, 0.001)
    for run in sorted(runs, key=lambda r: (r.started_at, r.id)):
        parts.append(_run_marks(run, x, TOP + lane_of[run.server] * LANE, end,
                                panel_top, ceiling))
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{panel_top + PANEL}" x2="{LEFT + plot}"'
                 f' y2="{panel_top + PANEL}"/>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{panel_top}" x2="{LEFT}"'
                 f' y2="{panel_top + PANEL}"/>')
    parts.append(f'<text class="tick" x="{LEFT - 8}" y="{panel_top + 8}" text-anchor="end">'
                 f'{_duration_text(ceiling)}</text>')
    parts.append(f'<text class="tick" x="{LEFT - 8}" y="{panel_top + PANEL}" text-anchor="end">'
                 f'0</text>')
    parts.append(f'<text class="lane-label" x="{LEFT - 8}" y="{panel_top + PANEL / 2}"'
                 f' text-anchor="end">duration</text>')
    parts.append(f'<text class="tick" x="{LEFT + plot}" y="{height - 4}" text-anchor="end">'
                 f'UTC, now at the right edge</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _run_marks(run: RunRow, x: Callable[[float], float], lane_y: float, end: float,
               panel_top: float, ceiling: float) -> str:
    begin = run.started_at.timestamp()
    finish = run.ended_at.timestamp() if run.ended_at is not None else end
    data = (f'data-run-id="{run.id}" data-server="{escape(run.server)}"'
            f' data-outcome="{escape(run.outcome)}"')
    when = run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if run.outcome == SKIPPED:
        tip = f"{when} on {run.server}: skipped ({run.error or 'lease held elsewhere'})"
        return (f'<rect class="skip" {data} x="{_num(x(begin))}" y="{lane_y + 12}" width="1"'
                f' height="8"><title>{escape(tip)}</title></rect>')
    duration = finish - begin
    state = "running" if run.outcome == RUNNING else run.outcome
    tip = (f"run {run.id} on {run.server}: {state}, {_duration_text(max(duration, 0.0))},"
           f" started {when}")
    if run.error and run.outcome != RUNNING:
        tip += f"\n{run.error.strip().splitlines()[-1][:200]}"
    left = x(begin)
    width = max(2.0, x(finish) - left)
    bar = (f'<rect class="run outcome-{escape(run.outcome)}" {data}'
           f' data-duration="{duration:.3f}" x="{_num(left)}" y="{lane_y}" width="{_num(width)}"'
           f' height="{LANE - 4}"><title>{escape(tip)}</title></rect>')
    if run.ended_at is None:
        return bar
    dot_y = panel_top + PANEL - min(duration, ceiling) / ceiling * PANEL
    dot = (f'<circle class="dot outcome-{escape(run.outcome)}" {data}'
           f' data-duration="{duration:.3f}" cx="{_num(left)}" cy="{_num(dot_y)}" r="3">'
           f'<title>{escape(tip)}</title></circle>')
    return bar + dot

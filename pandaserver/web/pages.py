"""The HTML pages, rendered on the server: plain tables, one local stylesheet, one local
script (auto-refresh), the timeline as inline SVG. Every value is escaped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from urllib.parse import quote

from pandaserver import __version__
from pandaserver.config.secrets import redact
from pandaserver.db.stores.runrecords import SKIPPED, RunRow
from pandaserver.fmt import offset, relative, span, when
from pandaserver.web.fleetview import Overview, ScriptDetail
from pandaserver.web.model import ScriptView, ServerView, next_due_label, schedule_label
from pandaserver.web.timeline import timeline_svg

NAV = (("", "Fleet"), ("scripts", "Scripts"), ("leases", "Leases"), ("api", "API"),
       ("metrics", "Metrics"))
SKEW_WARN = 1.0  # seconds of clock offset worth a highlight


def _e(value: object) -> str:
    """Every value a page shows: redacted, then escaped."""
    return escape(redact(str(value)))


def _cls(*names: str | None) -> str:
    joined = " ".join(n for n in names if n)
    return f' class="{joined}"' if joined else ""


def layout(title: str, body: str, *, prefix: str, refresh: float, current: str,
           now_text: str = "") -> str:
    nav = " ".join(
        f'<a href="{prefix}/{path}"{_cls("current" if path == current else None)}>{label}</a>'
        for path, label in NAV)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - panda-daemon</title>
<link rel="stylesheet" href="{prefix}/static/panda-web.css">
<script src="{prefix}/static/refresh.js" defer></script>
<noscript><meta http-equiv="refresh" content="{refresh:.0f}"></noscript>
</head>
<body data-refresh="{refresh:g}">
<header>
<h1>panda-daemon <span class="sub">{_e(title)}</span></h1>
<nav>{nav}</nav>
</header>
<main id="content">
<p class="meta">{now_text} <span id="refresh-state">refreshes every {refresh:g} s</span></p>
{body}
</main>
<footer>panda-daemon {_e(__version__)} &middot; read-only</footer>
</body>
</html>
"""


def _table(headers: Sequence[str], rows: Iterable[str], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f'<table{_cls(css)}><thead><tr>{head}</tr></thead>\n{"".join(rows)}</table>'


def _page(title: str, current: str, body: str, db_now: datetime, prefix: str,
          refresh: float) -> str:
    return layout(title, body, prefix=prefix, refresh=refresh, current=current,
                  now_text=f"database time {when(db_now)} UTC &middot;")


def _alerts(ov: Overview, prefix: str) -> str:
    items = []
    if ov.stale:
        names = ", ".join(f'<a href="{prefix}/scripts/{quote(s.name)}">{_e(s.name)}</a>'
                          for s in ov.stale)
        items.append(f'<li class="alert stale">stale (no success for {ov.stale_factor:g} x'
                     f' period anywhere): {names}</li>')
    if ov.late:
        names = ", ".join(f'<a href="{prefix}/scripts/{quote(s.name)}">{_e(s.name)}</a>'
                          for s in ov.late)
        items.append(f'<li class="alert late">late: {names}</li>')
    if ov.mismatched:
        names = ", ".join(_e(s.server) for s in ov.mismatched)
        items.append(f'<li class="alert mismatch">configuration differs: {names}</li>')
    if ov.silent:
        names = ", ".join(_e(s.server) for s in ov.silent)
        items.append(f'<li class="alert silent">no recent heartbeat: {names}</li>')
    for name, where in sorted(ov.crash_looping.items()):
        items.append(f'<li class="alert stale">crash-looping: <a href="{prefix}/scripts/'
                     f'{quote(name)}">{_e(name)}</a> on {_e(", ".join(where))}</li>')
    for h in ov.paused:
        scope = "every server" if h.server == "*" else _e(h.server)
        why = f": {_e(h.reason)}" if h.reason else ""
        items.append(f'<li class="alert late">paused on {scope}: <a href="{prefix}/scripts/'
                     f'{quote(h.name)}">{_e(h.name)}</a> by {_e(h.requested_by)}'
                     f' since {when(h.since)} UTC{why}</li>')
    if ov.draining:
        names = ", ".join(_e(s.server) for s in ov.draining)
        items.append(f'<li class="alert mismatch">draining (no new sync lease): {names}</li>')
    if not items:
        return '<ul class="alerts"><li class="ok">all scripts fresh, no late script,' \
               ' one configuration</li></ul>'
    return f'<ul class="alerts">{"".join(items)}</ul>'


def _server_row(s: ServerView, workers: str) -> str:
    skew = s.clock_offset is not None and abs(s.clock_offset) >= SKEW_WARN
    return (f'<tr{_cls("server", None if s.alive else "silent")} data-server="{_e(s.server)}">'
            f"<td>{_e(s.server)}</td>"
            f"<td>{('alive, draining' if s.draining else 'alive') if s.alive else 'silent'}</td>"
            f"<td>{span(s.heartbeat_age)} ago</td><td>{_e(s.version)}</td><td>{s.pid}</td>"
            f"<td>{when(s.started_at)}</td>"
            f'<td{_cls("hash", "mismatch" if s.config_mismatch else None)}'
            f' title="{_e(s.config_hash)}">{_e(s.config_hash[:12])}</td>'
            f'<td{_cls("offset", "skew" if skew else None)}>{offset(s.clock_offset)}</td>'
            f"<td>{workers}</td></tr>\n")


def fleet_page(ov: Overview, prefix: str, refresh: float) -> str:
    local = {m.server: m for m in ov.local}
    rows = []
    for s in ov.servers:
        m = local.get(s.server)
        workers = f"{m.workers_alive}/{m.n_proc}" if m is not None and m.alive else "-"
        rows.append(_server_row(s, workers))
    body = (_alerts(ov, prefix) + "<h2>Servers</h2>"
            + _table(["server", "state", "last heartbeat", "version", "pid", "started (its clock)",
                      "config hash", "clock offset", "workers (this host)"], rows, "servers")
            + f'<p class="note">scripts: {len(ov.scripts)}, leases: {len(ov.leases)}'
              f"{_contention_note(ov, prefix)}. Clock"
              " offset: the server's wall clock minus the database clock at its last heartbeat"
              " (?: its master does not report its clock). A server is silent after 3"
              " heartbeat intervals without a beat. Workers are known only for masters on"
              " this host.</p>")
    return _page("fleet", "", body, ov.db_now, prefix, refresh)


def _contention_note(ov: Overview, prefix: str) -> str:
    """``, refused grant attempts 40 (most: x 30, latest by b)``: the lease rows' counters."""
    total = sum(lease.contended for lease in ov.leases)
    if not total:
        return ""
    top = max(ov.leases, key=lambda lease: (lease.contended, lease.name))
    return (f', <span class="contended">refused grant attempts {total}</span> (most:'
            f" {_e(top.name)} {top.contended}, latest by {_e(top.contended_by or '?')}; see"
            f' <a href="{prefix}/leases">Leases</a>)')


def _flags(s: ScriptView) -> str:
    flags = []
    if s.stale:
        flags.append('<span class="badge stale">STALE</span>')
    if s.late:
        flags.append('<span class="badge late">LATE</span>')
    if not s.configured:
        flags.append('<span class="badge off">not configured here</span>')
    elif not s.enabled:
        flags.append('<span class="badge off">disabled</span>')
    if s.lease_holder:
        flags.append(f'<span class="badge held">running on {_e(s.lease_holder)}</span>')
    if s.paused_on:
        where = "" if "*" in s.paused_on else " on " + ", ".join(s.paused_on)
        flags.append(f'<span class="badge off">PAUSED{_e(where)}</span>')
    if s.crash_looping_on:
        flags.append('<span class="badge stale">CRASH-LOOPING on'
                     f" {_e(', '.join(s.crash_looping_on))}</span>")
    return " ".join(flags)


def _due(overdue: float | None, late: bool) -> str:
    return f'<td{_cls("due", "late" if late else None)}>' \
           f"{relative(-overdue if overdue is not None else None)}</td>"


def _script_rows(s: ScriptView, prefix: str) -> str:
    """A ``tbody`` per script: one row per server that ran it, script cells spanning them."""
    n = max(1, len(s.runs))
    span_n = f' rowspan="{n}"' if n > 1 else ""
    sync = "yes" if s.sync else "no" if s.sync is not None else "?"
    success = span(s.since_success) + " ago" if s.since_success is not None else "never"
    left = (f'<td{span_n}><a href="{prefix}/scripts/{quote(s.name)}">{_e(s.name)}</a></td>'
            f"<td{span_n}>{_e(schedule_label(s))}</td><td{span_n}>{sync}</td>")
    right = (f'<td{span_n}{_cls("success", "stale" if s.stale else None)}>{success}</td>'
             f'<td{span_n} class="flags">{_flags(s)}</td>')
    fleet_due = _due(s.overdue, s.late).replace("<td", f"<td{span_n}", 1)
    rows = []
    for i, r in enumerate(s.runs or [None]):
        cells = left if i == 0 else ""
        if r is None:
            cells += '<td class="none" colspan="4">no run recorded</td>' + fleet_due
        else:
            cells += (f'<td class="server">{_e(r.server)}</td><td>{when(r.started_at)}</td>'
                      f'<td{_cls("outcome", "outcome-" + r.outcome)}>{_e(r.outcome)}</td>'
                      f"<td>{span(r.duration)}</td>")
            if s.sync:
                cells += fleet_due if i == 0 else ""
            else:
                cells += _due(r.overdue, r.late)
        cells += right if i == 0 else ""
        server = f' data-server="{_e(r.server)}"' if r is not None else ""
        late = r is not None and r.late
        rows.append(f'<tr{_cls("server-run" if r else None, "late" if late else None)}{server}>'
                    f"{cells}</tr>\n")
    state = "stale" if s.stale else "late" if s.late else None
    return (f'<tbody{_cls("script", state)} data-script="{_e(s.name)}">'
            + "".join(rows) + "</tbody>\n")


def scripts_page(ov: Overview, prefix: str, refresh: float) -> str:
    body = (_alerts(ov, prefix)
            + _table(["script", "period or cron", "sync", "server", "last start", "outcome", "duration",
                      "next due", "last success anywhere", "flags"],
                     (_script_rows(s, prefix) for s in ov.scripts), "scripts")
            + f'<p class="note">Late: past due by more than max(300 s, period/2) and not running.'
              f" Stale: no successful run anywhere in the fleet for {ov.stale_factor:g} x the"
              " period. Periods are this server's configuration; a sync script is due"
              " fleet-wide (its lease), another on each server one period after its last"
              " start there. A cron script is due at its next firing (in its zone, UTC by"
              " default), late past max(300 s, half its shortest interval), stale after"
              f" {ov.stale_factor:g} firings without a success.</p>")
    return _page("scripts", "scripts", body, ov.db_now, prefix, refresh)


def _run_row(r: RunRow) -> str:
    error = ""
    if r.error:
        last = r.error.strip().splitlines()[-1] if r.error.strip() else ""
        error = (f"<details><summary>{_e(last[:120])}</summary><pre>{_e(r.error)}</pre>"
                 "</details>")
    return (f'<tr{_cls("run", "skip" if r.outcome == SKIPPED else None)}'
            f' data-run-id="{r.id}" data-server="{_e(r.server)}">'
            f"<td>{r.id}</td><td>{_e(r.server)}</td><td>{when(r.started_at)}</td>"
            f"<td>{span(r.duration)}</td>"
            f'<td{_cls("outcome", "outcome-" + r.outcome)}>{_e(r.outcome)}</td>'
            f"<td>{r.generation if r.generation is not None else '-'}</td><td>{error}</td></tr>\n")


def script_page(detail: ScriptDetail, name: str, prefix: str, refresh: float) -> str:
    s = detail.script
    facts = ""
    if s is not None:
        firing = next_due_label(s)
        every = f"period {span(s.period)}" if s.cron is None else _e(schedule_label(s))
        facts = (f'<p class="facts">{every}, timeout {span(s.timeout)},'
                 f" {'sync' if s.sync else 'per server'};"
                 f" next due {relative(-s.overdue if s.overdue is not None else None)}"
                 f"{'' if firing is None else ' (' + _e(firing) + ')'};"
                 f" last success anywhere"
                 f" {span(s.since_success) + ' ago' if s.since_success is not None else 'never'}"
                 f" {_flags(s)}</p>")
    body = (f"<h2>{_e(name)}</h2>{facts}"
            f"<h3>Timeline of the last {len(detail.runs)} runs: a lane per server; below, their"
            " durations</h3>"
            f'<div class="timeline-box">{timeline_svg(detail.runs, detail.db_now, name)}</div>'
            "<h3>Runs</h3>"
            + _table(["run", "server", "started", "duration", "outcome", "lease generation",
                      "error"], (_run_row(r) for r in detail.runs), "runs"))
    return _page(name, "scripts", body, detail.db_now, prefix, refresh)


def leases_page(ov: Overview, prefix: str, refresh: float) -> str:
    rows = []
    for lease in ov.leases:
        rows.append(
            f'<tr{_cls("lease", "held" if lease.held else None)} data-lease="{_e(lease.name)}">'
            f'<td><a href="{prefix}/scripts/{quote(lease.name)}">{_e(lease.name)}</a></td>'
            # finished: held, its run has ended; the release rides on the holder's next grant
            f"<td>{'free' if not lease.held else 'finished' if lease.finished else 'held'}</td>"
            f"<td>{_e(lease.owner_server or '-') if lease.held else '-'}</td>"
            f"<td>{lease.owner_pid if lease.held and lease.owner_pid else '-'}</td>"
            f"<td>{lease.generation}</td><td>{when(lease.acquired_at)}</td>"
            f"<td>{relative(lease.expires_in)}</td><td>{relative(lease.due_in)}</td>"
            # a cron script's lease: the latest firing it served, instead of a period
            f"<td>{span(lease.period) if lease.firing is None else 'served ' + when(lease.firing)}"
            "</td>"
            f'<td class="contended">{lease.contended}</td>'
            f"<td>{_e(lease.contended_by or '-')}</td>"
            f"<td>{relative(-lease.contended_ago if lease.contended_ago is not None else None)}"
            "</td></tr>\n")
    body = (_table(["script", "state", "holder", "pid", "generation", "last granted",
                    "expires", "next due", "period (cron: last firing)", "refused",
                    "latest refused server", "latest refusal"],
                   rows, "leases")
            + '<p class="note">One lease per sync script; times are the database clock.'
              " Refused: grant attempts the lease turned down, ever (another server held it or"
              " had served the period); a refusal writes no history row."
              " <code>panda-daemon unlock NAME</code> frees one whose holder died.</p>")
    return _page("leases", "leases", body, ov.db_now, prefix, refresh)


def error_page(title: str, message: str, prefix: str, refresh: float) -> str:
    body = f'<div class="alert error"><h2>{_e(title)}</h2><p>{_e(message)}</p></div>'
    return layout(title, body, prefix=prefix, refresh=refresh, current="")

"""``check-config``: the scripts as they will run, every problem, and what ``run`` and
``start`` would do with this configuration (the same ``validate`` they call)."""

from __future__ import annotations

import os

from pandaserver.config import PandaConfig
from pandaserver.config.files import json_override_path
from pandaserver.config.secrets import redact
from pandaserver.fmt import table
from pandaserver.preflight.validate import CHECK, RUN, START, Finding, Verdict, validate


def _fmt(seconds: float) -> str:
    return f"{seconds:g}"


def _sources(cfg: PandaConfig) -> list[str]:
    lines = []
    files = [str(p) for p in cfg.sources if p.suffix != ".json"] or [str(cfg.path)]
    if len(files) == 1:
        lines.append(f"config file: {files[0]}")
    else:
        lines.append(f"config files: {', '.join(files)} (read in this order; a later one's"
                     " keys win)")
    overrides = [str(p) for p in cfg.sources if p.suffix == ".json"]
    if overrides:
        lines.append(f"JSON override: {', '.join(overrides)} (its keys win)")
    else:
        candidate = json_override_path()
        if candidate is not None and candidate.is_file():
            lines.append(f"JSON override: {candidate} exists but is not read (-c names the"
                         f" files; the PanDA server would apply it: add it, -c FILE{os.pathsep}"
                         f"{candidate})")
    return lines


def _outage(verdict: Verdict) -> list[Finding]:
    """Errors of check-config's own connection that do not stop run or start (they start
    in a database outage and wait for it)."""
    return [f for f in verdict.errors(CHECK) if RUN not in f.stops and START not in f.stops]


def _verdict_line(cfg: PandaConfig, verdict: Verdict) -> str:
    settings = cfg.daemon
    scheduled = [s for s in settings.enabled_scripts if s.name not in verdict.dropped()]
    waiting = [s.name for s in scheduled if verdict.imports.get(s.module) == "FAILED"]
    count = len(scheduled) - len(waiting)
    parts = []
    for command in (RUN, START):
        errors = verdict.errors(command)
        if errors:
            parts.append(f"{command} refuses to start (exit {errors[0].code})")
        else:
            parts.append(f"{command} starts {count} script(s) on {settings.n_proc} worker(s)")
    if waiting and not (verdict.errors(RUN) and verdict.errors(START)):
        parts.append(f"{len(waiting)} more script(s) ({', '.join(waiting)}) wait until their"
                     " module imports (the problems above)")
    line = "verdict: " + "; ".join(parts)
    outage = _outage(verdict)
    if outage:
        line = (f"verdict: check-config refuses (exit {outage[0].code}): the database did not"
                " accept the connection (above); as it is, " + "; ".join(parts)
                + "; no sync script runs and no history is recorded until it does")
    if not settings.enable and not any(p.key == "enable" for p in settings.fatal):
        line = ("verdict: the daemon is disabled (enable = False): run and start exit 0 without"
                " starting anything; with enable = True: " + "; ".join(parts))
    return line


def _listed(title: str, findings: list[Finding]) -> list[str]:
    if not findings:
        return []
    return [title, *(f"  - {f.message}" for f in findings)]


def render_check(cfg: PandaConfig, try_import: bool = True, connect: bool = False
                 ) -> tuple[str, int]:
    """The report and the exit status of ``check-config``."""
    verdict = validate(cfg, CHECK, try_import=try_import, connect=connect)
    settings = cfg.daemon
    lines = [
        *_sources(cfg),
        f"daemon enabled: {settings.enable}   package: {settings.package or '-'}"
        f"   n_proc: {settings.n_proc}   proc_lifetime: {_fmt(settings.proc_lifetime)} s"
        f"   stop_grace: {_fmt(settings.stop_grace)} s",
        f"database: {verdict.database or 'unusable (see below)'}"
        + ("" if connect or not verdict.database else "   (not connected: --connect tries)"),
        "",
    ]
    header = ("script", "enable", "module", "period", "timeout", "sync", "loop", "arguments",
              "import")
    rows: list[tuple[str, ...]] = []
    for spec in settings.scripts.values():
        status = verdict.imports.get(spec.module, "-") if spec.enable else "-"
        # a cron schedule shows its zone, UTC when none is set (the default, stated)
        every = _fmt(spec.period) if spec.cron is None else \
            f"cron {spec.cron.expression} ({spec.cron.zone})"
        rows.append((spec.name, str(spec.enable).lower(), spec.module, every,
                     _fmt(spec.timeout), str(spec.sync).lower(), str(spec.loop).lower(),
                     redact(" ".join(str(a) for a in spec.arguments)) or "-", status))
    if rows:
        lines.extend(table([list(header), *(list(r) for r in rows)]))
    else:
        lines.append("no valid scripts")
    lines.append("")
    errors = verdict.errors(CHECK)
    problems = verdict.problems()
    warnings = verdict.warnings(CHECK)
    outage = _outage(verdict)
    refusals = [f for f in errors if f not in outage]
    lines += _listed(f"{len(refusals)} error(s): what run or start refuses to start with",
                     refusals)
    lines += _listed(f"{len(outage)} error(s): the database did not accept the connection (run and"
                     " start would start and wait for it)", outage)
    lines += _listed(f"{len(problems)} problem(s): these scripts or keys are left out; the"
                     " rest runs", problems)
    lines += _listed(f"{len(warnings)} warning(s):", warnings)
    if not errors and not problems:
        lines.append("no problems")
    lines.append(_verdict_line(cfg, verdict))
    return "\n".join(redact(line) for line in lines) + "\n", verdict.exit_code(CHECK)

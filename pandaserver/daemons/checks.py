"""``check-config``: the scripts as they will run, and every problem."""

from __future__ import annotations

from pandaserver.config import PandaConfig
from pandaserver.daemons.invoke import describe_import_error, import_script
from pandaserver.fmt import table


def _fmt(seconds: float) -> str:
    return f"{seconds:g}"


def render_check(cfg: PandaConfig, try_import: bool = True) -> tuple[str, bool]:
    settings = cfg.daemon
    lines = [
        f"config file: {cfg.path}",
        f"daemon enabled: {settings.enable}   package: {settings.package or '-'}"
        f"   n_proc: {settings.n_proc}   proc_lifetime: {_fmt(settings.proc_lifetime)} s"
        f"   stop_grace: {_fmt(settings.stop_grace)} s",
        "",
    ]
    problems = [str(p) for p in settings.problems]
    header = ("script", "enable", "module", "period", "timeout", "sync", "loop", "arguments",
              "import")
    rows: list[tuple[str, ...]] = []
    for spec in settings.scripts.values():
        status = "-"
        if try_import and settings.package and spec.enable:
            try:
                import_script(settings.package, spec.module)
                status = "ok"
            except BaseException as exc:
                status = "FAILED"
                problems.append(f"{cfg.path} [daemon] config script {spec.name!r}: "
                                f"{describe_import_error(settings.package, spec.module, exc)}")
        rows.append((spec.name, str(spec.enable).lower(), spec.module, _fmt(spec.period),
                     _fmt(spec.timeout), str(spec.sync).lower(), str(spec.loop).lower(),
                     " ".join(str(a) for a in spec.arguments) or "-", status))
    if rows:
        lines.extend(table([list(header), *(list(r) for r in rows)]))
    else:
        lines.append("no valid scripts")
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append("no problems")
    return "\n".join(lines) + "\n", not problems

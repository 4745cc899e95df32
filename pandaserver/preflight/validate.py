"""One validation for ``check-config``, ``run``, ``run-once``, ``start``, ``restart`` and
``reload``: they all call ``validate`` and so agree on what stops them and with which exit
status.

A ``Finding`` is an *error* (the command refuses: it names the commands it stops and its
exit status), a *problem* (reported; one script does not run, or a key is ignored; the
others run) or a *warning* (it works, but is probably not meant). Every message names the
file, section, script and key, and never shows a secret (``pandaserver.config.secrets``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pandaserver import exitcodes
from pandaserver.config import PandaConfig
from pandaserver.config.secrets import redact
from pandaserver.preflight.dbsettings import database_findings

if TYPE_CHECKING:
    from pandaserver.preflight.imports import StartedProbe

ERROR = "error"
PROBLEM = "problem"
WARNING = "warning"
CHECK, RUN, START, RELOAD, RUN_ONCE = "check-config", "run", "start", "reload", "run-once"
ALL_COMMANDS = (CHECK, RUN, START, RELOAD, RUN_ONCE)


@dataclass(frozen=True)
class Finding:
    level: str
    message: str
    code: int = exitcodes.RET_CONFIG
    script: str | None = None  # a problem that keeps this script from running
    drop: bool = False  # the script is taken out of the schedule (it would fail every run)
    stops: tuple[str, ...] = ALL_COMMANDS  # the commands an error stops

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", redact(self.message))


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    imports: dict[str, str] = field(default_factory=dict)  # module -> "ok" | "FAILED"
    database: str = ""  # where the database is, without a password

    def add(self, finding: Finding) -> None:
        if finding not in self.findings:
            self.findings.append(finding)

    def errors(self, command: str) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR and command in f.stops]

    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == PROBLEM]

    def warnings(self, command: str) -> list[Finding]:
        """Warnings, and errors that do not stop ``command`` (start-only user checks)."""
        return [f for f in self.findings
                if f.level == WARNING or (f.level == ERROR and command not in f.stops)]

    def exit_code(self, command: str) -> int:
        """The status ``command`` ends with on this verdict (0: it goes on)."""
        errors = self.errors(command)
        if errors:
            return errors[0].code
        if command == CHECK and self.problems():
            return exitcodes.RET_CONFIG
        return exitcodes.RET_OK

    def dropped(self) -> set[str]:
        return {f.script for f in self.findings if f.drop and f.script is not None}


def validate(cfg: PandaConfig, command: str, *, try_import: bool = True, connect: bool = False,
             euid: int | None = None, environ: Mapping[str, str] | None = None,
             cwd: str | None = None, import_timeout: float | None = None,
             meanwhile: Callable[[], object] | None = None) -> Verdict:
    """Everything ``command`` would stop on, and every problem and warning.

    ``meanwhile`` is called once the checks but the import check are done and none of them
    refused, before the import check's answer is awaited: work the caller needs only if
    the verdict lets it go on, done while the import check's interpreter works on the
    other core (``run`` imports the master's modules)."""
    env = os.environ if environ is None else environ
    verdict = Verdict()
    settings = cfg.daemon
    unusable = settings.unusable()
    for problem in unusable:  # a config value that runs no script does not stop run-once
        whole_config = problem not in settings.fatal
        verdict.add(Finding(ERROR, str(problem),
                            stops=(CHECK, RUN, START, RELOAD) if whole_config else ALL_COMMANDS))
    for problem in settings.problems:
        if problem not in unusable:
            verdict.add(Finding(PROBLEM, str(problem), script=problem.script))
    broken = {problem.script for problem in settings.problems if problem.script is not None}
    if broken and not settings.scripts and not unusable:
        verdict.add(Finding(ERROR, f"{cfg.where('daemon', 'config')}: every script entry has a"
                                   " problem (below): no script would run",
                            stops=(CHECK, RUN, START, RELOAD)))
    for problem in settings.warnings:
        verdict.add(Finding(WARNING, str(problem)))
    # the import check runs in a subprocess: started first, it works beside the checks below
    probe = _start_imports(cfg, cwd, env, import_timeout) \
        if try_import and command != RUN_ONCE else None
    try:
        sync = [spec.name for spec in settings.enabled_scripts if spec.sync]
        where, findings = database_findings(cfg, connect=connect, sync_scripts=sync)
        verdict.database = where
        for level, message, code in findings:  # an unreachable database stops check-config
            # --connect only: the master starts in an outage and resumes by itself
            verdict.add(Finding(level, message, code=code,
                                stops=(CHECK,) if code == exitcodes.RET_DATABASE else ALL_COMMANDS))
        _check_users(cfg, verdict, euid, env)
        if meanwhile is not None and not verdict.errors(command):
            meanwhile()
    except BaseException:
        if probe is not None:
            from pandaserver.preflight.imports import abandon_probe

            abandon_probe(probe[1])
        raise
    if probe is not None:
        _check_imports(cfg, verdict, probe)
    return verdict


def _check_users(cfg: PandaConfig, verdict: Verdict, euid: int | None,
                 env: Mapping[str, str]) -> None:
    """As root (without PANDA_NO_ROOT), start switches to uname/gname and refuses when it
    cannot: an error for start (and reload, whose next start it would be); run keeps the
    user it is started as, so for run it is a warning. Not as root, nothing is switched:
    a user or group that does not exist is a warning."""
    import grp
    import pwd

    from pandaserver.config.users import NO_ROOT_VARIABLE, PrivilegeError, resolve_user

    settings = cfg.daemon
    where = str(cfg.path)
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and NO_ROOT_VARIABLE not in env:
        try:
            resolve_user(settings.uname, settings.gname, where, euid=0, environ=env)
        except PrivilegeError as exc:
            key = "gname" if str(exc).startswith("group") else "uname"
            verdict.add(Finding(ERROR, f"{cfg.where('daemon', key)}: {exc} (start refuses,"
                                       f" exit {exitcodes.RET_USER}; run keeps the user it is"
                                       " started as)",
                                code=exitcodes.RET_USER, stops=(CHECK, START, RELOAD)))
        return
    if settings.uname:
        try:
            pwd.getpwnam(settings.uname)
        except KeyError:
            verdict.add(Finding(WARNING, f"{cfg.where('daemon', 'uname')}: user {settings.uname!r}"
                                         " does not exist on this host (start as root would"
                                         f" refuse, exit {exitcodes.RET_USER})"))
    if settings.gname:
        try:
            grp.getgrnam(settings.gname)
        except KeyError:
            verdict.add(Finding(WARNING, f"{cfg.where('daemon', 'gname')}: group"
                                         f" {settings.gname!r} does not exist on this host"
                                         f" (start as root would refuse, exit"
                                         f" {exitcodes.RET_USER})"))


def _start_imports(cfg: PandaConfig, cwd: str | None, env: Mapping[str, str],
                   timeout: float | None) -> tuple[list[str], StartedProbe] | None:
    """The import check of the enabled scripts' modules, started (None: nothing to check)."""
    from pandaserver.preflight.imports import PROBE_TIMEOUT, start_probe

    settings = cfg.daemon
    if not settings.package or any(p.key == "package" for p in settings.fatal):
        return None
    modules = sorted({spec.module for spec in settings.enabled_scripts})
    return modules, start_probe(settings.package, modules, cwd=cwd, env=env,
                                timeout=PROBE_TIMEOUT if timeout is None else timeout)


def _check_imports(cfg: PandaConfig, verdict: Verdict,
                   probe: tuple[list[str], StartedProbe]) -> None:
    from pandaserver.preflight.imports import finish_probe

    settings = cfg.daemon
    specs = settings.enabled_scripts
    modules, started = probe
    result = finish_probe(started)
    where = cfg.where("daemon", "package")
    if result.failure is not None:
        verdict.add(Finding(ERROR, f"{where}: {result.failure}"))
        return
    if result.package_error is not None:
        verdict.add(Finding(ERROR, f"{where}: package {settings.package!r} does not import"
                                   f" ({result.package_error}): no script could run; check"
                                   " the name and the PYTHONPATH the daemon runs with"))
        for module in modules:
            verdict.imports[module] = "FAILED"
        return
    for spec in specs:
        error = result.module_errors.get(spec.module)
        signature = result.signature_errors.get(spec.module)
        verdict.imports[spec.module] = "FAILED" if error or signature else "ok"
        place = f"{cfg.path} [daemon] config script {spec.name!r}"
        if error is not None:
            verdict.add(Finding(PROBLEM, f"{place}: {error}", script=spec.name))
        elif signature is not None:
            verdict.add(Finding(PROBLEM, f"{place}: {signature}; it will not run",
                                script=spec.name, drop=True))


def drop_scripts(cfg: PandaConfig, verdict: Verdict) -> None:
    """Take out of the schedule the scripts whose every run would fail at the call, and note
    those whose module did not import (``DaemonSettings.waiting_imports``): the master holds
    them until a worker imports it, without counting them as running."""
    for name in verdict.dropped():
        cfg.daemon.scripts.pop(name, None)
    why = {f.script: f.message for f in verdict.problems() if f.script is not None}
    cfg.daemon.waiting_imports = {
        spec.name: why.get(spec.name, f"cannot import {spec.module}")
        for spec in cfg.daemon.enabled_scripts if verdict.imports.get(spec.module) == "FAILED"}

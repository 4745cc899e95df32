"""Import the script modules in a fresh interpreter, as a worker does, and check each ``main``.

``run_probe`` starts ``python -m pandaserver.preflight.imports`` with the same interpreter,
environment and working directory the workers will have, so what it says is what they
will meet; the process importing never is the caller (a master must not import scripts,
and a module fixed on disk must be seen fresh). The answer is one JSON object on a file
descriptor of its own: whatever the modules print at import goes to /dev/null.
"""

from __future__ import annotations

import inspect
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What the daemon passes main() (pandaserver.daemons.worker): main(argv=, tbuf=, lock_pool=)
KEYWORDS = ("argv", "tbuf", "lock_pool")
PROBE_TIMEOUT = 60.0


@dataclass
class ProbeResult:
    package_error: str | None = None
    module_errors: dict[str, str] = field(default_factory=dict)
    signature_errors: dict[str, str] = field(default_factory=dict)
    failure: str | None = None  # the probe itself could not answer (timeout, crash)


def call_problem(main: Callable[..., Any]) -> str | None:
    """Why the daemon's call of ``main`` would fail with TypeError on every run, or None."""
    from pandaserver.daemons.worker.invoke import passed_keywords

    try:
        signature = inspect.signature(main)
    except (TypeError, ValueError):
        return None  # a builtin or an odd callable: nothing to judge by
    passed = passed_keywords(main, KEYWORDS)
    try:
        signature.bind(**dict.fromkeys(passed))
    except TypeError as exc:
        given = ", ".join(f"{name}=..." for name in passed)
        return (f"main{signature} cannot be called the way the daemon calls it (it passes"
                " argv=, tbuf= and lock_pool=, each only if main names it or takes **kwargs:"
                f" here main({given})): {exc}")
    return None


def probe(package: str, modules: list[str]) -> dict[str, Any]:
    """Import ``package`` and each ``package.module``; check each ``main``."""
    import importlib

    from pandaserver.daemons.worker.invoke import describe_import_error, import_script

    result: dict[str, Any] = {"package": None, "modules": {}, "signatures": {}}
    try:
        importlib.import_module(package)
    except BaseException as exc:  # a module may raise anything, SystemExit included
        result["package"] = f"{type(exc).__name__}: {exc}"
        return result
    for module in modules:
        try:
            loaded = import_script(package, module)
        except BaseException as exc:
            result["modules"][module] = describe_import_error(package, module, exc)
            continue
        problem = call_problem(loaded.main)
        if problem is not None:
            result["signatures"][module] = problem
    return result


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """``proc.wait(timeout)`` without its sleep-and-poll: one wait on the process's pidfd."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped, or no pidfd: fall back
        proc.wait(timeout=timeout)
        return
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    proc.wait()


@dataclass
class StartedProbe:
    """A probe running beside the caller (``start_probe``); ``finish_probe`` collects it."""

    package: str
    timeout: float
    proc: subprocess.Popen[bytes] | None = None
    read_fd: int = -1
    deadline: float = 0.0
    failure: str | None = None  # it could not be started


def start_probe(package: str, modules: list[str], *, cwd: str | None = None,
                env: Mapping[str, str] | None = None,
                timeout: float = PROBE_TIMEOUT) -> StartedProbe:
    """Start ``probe`` in a fresh interpreter and hand it its request; the caller may do
    other work (on the other core) before ``finish_probe``."""
    started = StartedProbe(package=package, timeout=timeout)
    read_fd, write_fd = os.pipe()
    request = json.dumps({"package": package, "modules": modules, "fd": write_fd})
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pandaserver.preflight.imports"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
            env=dict(env) if env is not None else None, pass_fds=(write_fd,),
            start_new_session=True)
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        started.failure = f"cannot start {sys.executable} to import the scripts: {exc}"
        return started
    os.close(write_fd)
    started.proc, started.read_fd = proc, read_fd
    started.deadline = time.monotonic() + timeout
    try:
        assert proc.stdin is not None
        proc.stdin.write(request.encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it ended at once: finish_probe says how
    return started


def finish_probe(started: StartedProbe) -> ProbeResult:
    """The answer of a probe from ``start_probe`` (killed with its process group at its
    timeout, counted from its start)."""
    if started.failure is not None or started.proc is None:
        return ProbeResult(failure=started.failure)
    proc, package, timeout = started.proc, started.package, started.timeout
    try:
        data = _read_all(started.read_fd, started.deadline)
        _wait_exit(proc, max(0.1, started.deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, TimeoutError):
        _kill_group(proc)
        return ProbeResult(failure=f"importing the script modules of {package} did not finish"
                                   f" within {timeout:g} s (a module that waits or works at"
                                   " import would hold every worker the same way)")
    finally:
        os.close(started.read_fd)
    try:
        answer = json.loads(data)
    except ValueError:
        return ProbeResult(failure=f"importing the script modules of {package} ended the"
                                   f" interpreter (exit status {proc.returncode}) before it"
                                   " could answer")
    return ProbeResult(package_error=answer.get("package"),
                       module_errors=dict(answer.get("modules", {})),
                       signature_errors=dict(answer.get("signatures", {})))


def abandon_probe(started: StartedProbe) -> None:
    """End a probe whose answer is no longer wanted (its caller failed meanwhile)."""
    if started.proc is not None:
        _kill_group(started.proc)
        os.close(started.read_fd)
        started.proc = None


def run_probe(package: str, modules: list[str], *, cwd: str | None = None,
              env: Mapping[str, str] | None = None,
              timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Run ``probe`` in a fresh interpreter (killed with its process group at ``timeout``)."""
    return finish_probe(start_probe(package, modules, cwd=cwd, env=env, timeout=timeout))


def _read_all(fd: int, deadline: float) -> bytes:
    import select

    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        chunks.append(chunk)
        if not chunk or chunk.endswith(b"\n"):  # the answer is one line
            return b"".join(chunks)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
        pass


def main() -> None:
    request = json.loads(sys.stdin.read())
    out = os.fdopen(int(request["fd"]), "w", encoding="utf-8")
    result = probe(str(request["package"]), [str(m) for m in request["modules"]])
    out.write(json.dumps(result) + "\n")
    out.close()


if __name__ == "__main__":
    main()

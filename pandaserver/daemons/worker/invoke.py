"""Call a script's ``main()`` the way the original PanDA daemon did, and classify the result."""

from __future__ import annotations

import importlib
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pandaserver.daemons.base.protocol import FAILED, LOST, OK

log = logging.getLogger("panda.worker")


@dataclass
class Result:
    outcome: str
    error: str | None = None
    calls: int = 0


def import_script(package: str, module: str) -> ModuleType:
    """Import ``package.module`` and check it has a callable ``main``."""
    loaded = importlib.import_module(f"{package}.{module}")
    if not callable(getattr(loaded, "main", None)):
        raise ImportError(f"module {loaded.__name__} has no main() function")
    return loaded


def describe_import_error(package: str, module: str, exc: BaseException) -> str:
    return f"cannot import {package}.{module}: {type(exc).__name__}: {exc}"


def passed_keywords(main: Callable[..., Any], names: Iterable[str]) -> list[str]:
    """The keywords of ``names`` that ``main`` is given: all of them when it takes
    ``**kwargs`` (or has no readable signature), else those it names."""
    try:
        params = inspect.signature(main).parameters
    except (TypeError, ValueError):
        return list(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return list(names)
    return [name for name in names if name in params]


def _call_with(main: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Pass the keyword arguments ``main`` accepts (all of them if it takes ``**kwargs``)."""
    return main(**{name: kwargs[name] for name in passed_keywords(main, kwargs)})


def run_main(
    module: ModuleType,
    kwargs: dict[str, Any],
    *,
    loop: bool,
    period: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> Result:
    """Run once, or in loop mode again while ``main`` returns true and ``period`` has not passed.

    An exception is a failure (logged with its traceback); ``sys.exit`` is a lost run.
    """
    started = monotonic()
    calls = 0
    try:
        while True:
            calls += 1
            returned = _call_with(module.main, kwargs)
            if not loop or not returned or monotonic() - started >= period:
                return Result(OK, calls=calls)
    except SystemExit as exc:
        return Result(LOST, f"script called sys.exit({exc.code!r})", calls=calls)
    except BaseException as exc:  # a script's failure must never take the worker down
        text = traceback.format_exc()
        log.error("script raised %s: %s\n%s", type(exc).__name__, exc, text.rstrip())
        return Result(FAILED, f"{type(exc).__name__}: {exc}", calls=calls)

"""The ``[daemon_web]`` section of ``panda_server.cfg``: settings of the fleet pages.

Every key is optional::

    [daemon_web]
    # a script with no successful run anywhere in the fleet for stale_factor x its period
    # is stale (pages, metrics, `panda-daemon fleet --check`)
    stale_factor = 3
    # where `panda-daemon web` listens (localhost by default: the pages are not
    # authenticated; put them behind the PanDA server's Apache to publish them)
    bind = 127.0.0.1:8088
    # seconds between refreshes of an open page
    refresh = 15

Values may be ``$VAR``. A command-line option wins over the file. An invalid value is an
error naming the file, section, key and value, and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pandaserver.config import PandaConfig
from pandaserver.config.files import expand_env, read_parser

SECTION = "daemon_web"
DEFAULT_BIND = "127.0.0.1:8088"
DEFAULT_STALE_FACTOR = 3.0
DEFAULT_REFRESH = 15.0


class WebConfigError(ValueError):
    """A ``[daemon_web]`` value is unusable (the message names file, key and value)."""


@dataclass(frozen=True)
class WebSettings:
    stale_factor: float = DEFAULT_STALE_FACTOR
    bind: str = DEFAULT_BIND
    refresh: float = DEFAULT_REFRESH

    def with_overrides(self, **values: Any) -> WebSettings:
        """A copy with the values that are not None (command-line options)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def _at_least(minimum: float, unit: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number of {unit}, got: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"must be a finite number of {unit} >= {minimum:g}, got: {text!r}")
        return value
    return parse


parse_factor = _at_least(1, "periods")
parse_refresh = _at_least(1, "seconds")


def parse_bind(text: str) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) or ``unix:/path``."""
    text = text.strip()
    if text.startswith("unix:") and len(text) > 5:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be HOST:PORT or unix:PATH, got: {text!r}")
    return text


_KEYS: dict[str, Callable[[str], Any]] = {
    "stale_factor": parse_factor,
    "bind": parse_bind,
    "refresh": parse_refresh,
}


def settings_from_section(where: str, section: Mapping[str, str],
                          environ: Mapping[str, str] | None = None) -> WebSettings:
    values: dict[str, Any] = {}
    for key, raw in section.items():
        parser = _KEYS.get(key)
        if parser is None:
            raise WebConfigError(f"{where} [{SECTION}] unknown key {key!r}; allowed keys:"
                                 f" {', '.join(sorted(_KEYS))}")
        try:
            values[key] = parser(expand_env(raw, environ))
        except KeyError as exc:
            raise WebConfigError(f"{where} [{SECTION}] key {key!r}: refers to environment"
                                 f" variable ${exc.args[0]}, which is not set") from None
        except ValueError as exc:
            raise WebConfigError(f"{where} [{SECTION}] key {key!r}: {exc}") from None
    return WebSettings(**values)


def web_settings(cfg: PandaConfig) -> WebSettings:
    """The ``[daemon_web]`` settings of ``cfg``'s file (defaults when it has none)."""
    if not cfg.path.is_file():  # a config built in memory
        return WebSettings()
    parser = read_parser(cfg.path)
    if not parser.has_section(SECTION):
        return WebSettings()
    return settings_from_section(str(cfg.path), dict(parser.items(SECTION)))

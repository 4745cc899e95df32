"""Read ``panda_server.cfg``: typed ``[server]`` and ``[daemon]`` settings.

``load_config(path)`` is the one entry point; it raises ``ConfigError`` only when the
file cannot be used at all, and otherwise returns every problem it found. It registers
every secret it reads (``pandaserver.config.secrets``), so no message shows one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pandaserver.config import secrets
from pandaserver.config.daemon import DaemonSettings, parse_daemon_section
from pandaserver.config.files import expand_env, find_config_sources, main_source, read_sources
from pandaserver.config.problems import ConfigError, ConfigProblem
from pandaserver.config.scripts import DaemonSpec, default_timeout

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "DaemonSettings",
    "DaemonSpec",
    "PandaConfig",
    "default_timeout",
    "load_config",
]


@dataclass
class PandaConfig:
    path: Path
    daemon: DaemonSettings
    server: dict[str, str] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    origins: dict[tuple[str, str], Path] = field(default_factory=dict)

    def where(self, section: str, key: str) -> str:
        """Where a key is set, for messages: ``FILE [section] key 'name'``."""
        return f"{self.origins.get((section, key), self.path)} [{section}] key {key!r}"

    def server_value(self, key: str, default: str | None = None) -> str | None:
        """A ``[server]`` value with ``$VAR`` expanded (KeyError names an unset variable)."""
        if key not in self.server:
            return default
        return expand_env(self.server[key])

    @property
    def origin(self) -> str:
        """What ``load_config`` reads to get this configuration again (``-c`` accepts it)."""
        return os.pathsep.join(str(p) for p in self.sources) if self.sources else str(self.path)


def _register_secrets(sections: Mapping[str, Mapping[str, str]],
                      environ: Mapping[str, str] | None) -> None:
    for values in sections.values():
        for key, raw in values.items():
            try:
                value = expand_env(raw, environ)
            except KeyError:  # "$VAR" unset: the name of a variable is no secret
                continue
            if secrets.is_secret_name(key):
                secrets.register(value)
            for secret in secrets.url_secrets(value):
                secrets.register(secret)
            if key == "config":
                for arguments in _lists(value):
                    for secret in secrets.option_values(arguments):
                        secrets.register(secret)


def _lists(config: str) -> Iterator[list[object]]:
    """Every JSON list in the ``config`` value (the scripts' arguments, and a mistyped
    key's list): a ``--password VALUE`` in any of them is a secret."""
    try:
        data = json.loads(config)
    except ValueError:
        return
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            yield item
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> PandaConfig:
    sources = find_config_sources(explicit, environ)
    raw = read_sources(sources)
    _register_secrets(raw.sections, environ)
    path = main_source(sources)
    if not raw.has_section("daemon"):
        read = ", ".join(str(p) for p in sources)
        raise ConfigError([f"{path}: has no [daemon] section"
                           + (f" (read: {read})" if len(sources) > 1 else "")])
    origins = {key: where for (section, key), where in raw.origins.items()
               if section == "daemon"}
    daemon = parse_daemon_section(path, raw.sections["daemon"], environ, origins=origins)
    server = dict(raw.sections.get("server", {}))
    return PandaConfig(path=path, daemon=daemon, server=server, sources=sources,
                       origins=dict(raw.origins))

"""Read ``panda_server.cfg``: typed ``[server]`` and ``[daemon]`` settings.

``load_config(path)`` is the one entry point; it raises ``ConfigError`` only when the
file cannot be used at all, and otherwise returns every problem it found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pandaserver.config.daemon import DaemonSettings, parse_daemon_section
from pandaserver.config.files import expand_env, find_config_file, read_parser
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

    def server_value(self, key: str, default: str | None = None) -> str | None:
        """A ``[server]`` value with ``$VAR`` expanded (KeyError names an unset variable)."""
        if key not in self.server:
            return default
        return expand_env(self.server[key])


def load_config(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> PandaConfig:
    path = find_config_file(explicit, environ)
    parser = read_parser(path)
    if not parser.has_section("daemon"):
        raise ConfigError([f"{path}: has no [daemon] section"])
    daemon = parse_daemon_section(path, dict(parser.items("daemon")), environ)
    server = dict(parser.items("server")) if parser.has_section("server") else {}
    return PandaConfig(path=path, daemon=daemon, server=server)


"""Find and read ``panda_server.cfg``; expand ``$VAR`` values from the environment."""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pandaserver.config.problems import ConfigError

_ENV_VALUE = re.compile(r"^\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))$")


def candidate_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The files tried, in order, when no ``-c FILE`` is given."""
    env = os.environ if environ is None else environ
    paths: list[Path] = []
    home = env.get("PANDA_HOME")
    if home:
        paths.append(Path(home) / "etc" / "panda" / "panda_server.cfg")
    paths.append(Path("/etc/panda/panda_server.cfg"))
    return paths


def find_config_file(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the configuration file to use, or raise ConfigError naming every path tried."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError([f"configuration file not found: {path} (given with -c)"])
        return path
    tried = candidate_paths(environ)
    for path in tried:
        if path.is_file():
            return path
    hint = "" if (environ or os.environ).get("PANDA_HOME") else " ($PANDA_HOME is not set)"
    raise ConfigError(
        [
            "no configuration file found; tried: "
            + ", ".join(str(p) for p in tried)
            + hint
            + "; give one with -c FILE"
        ]
    )


def read_parser(path: Path) -> configparser.ConfigParser:
    """Parse the file as INI without interpolation (values are taken literally)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        raise ConfigError([f"{path}: cannot parse: {exc}"]) from exc
    return parser


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """A value that is exactly ``$VAR`` or ``${VAR}`` is read from the environment.

    Raises KeyError with the variable name when it is unset.
    """
    match = _ENV_VALUE.match(value.strip())
    if match is None:
        return value
    name = match.group("braced") or match.group("plain")
    env = os.environ if environ is None else environ
    if name not in env:
        raise KeyError(name)
    return env[name]


def key_line_numbers(path: Path, section: str) -> dict[str, int]:
    """1-based file line of each key of ``section`` (for locating errors in values)."""
    lines: dict[str, int] = {}
    current: str | None = None
    key_re = re.compile(r"^([^\s=:#;][^=:]*?)\s*[=:]")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return lines
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1].strip()
            continue
        if current == section:
            match = key_re.match(raw)
            if match:
                lines.setdefault(match.group(1).strip(), number)
    return lines

"""Find and read ``panda_server.cfg`` as the PanDA server does; expand ``$VAR`` values.

Without ``-c``, every file of ``candidate_paths`` that exists is read, in that order, a
later file's key replacing an earlier one's (PanDA's ``LiveConfigParser.read``); then the
JSON override ``$PANDA_HOME/etc/config_json/panda_server_config.json`` replaces keys of
the sections it names (PanDA's ``config_utils.load_config_map``). ``-c FILE`` reads FILE
alone; ``-c A:B:C`` reads those in that order (a ``.json`` one as an override): the master
hands its workers the list it read, so they see what it saw. ``expand_env`` reads
``$VAR`` values and ``${VAR}`` inside values from the environment.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pandaserver.config.problems import ConfigError

CONFIG_NAME = "panda_server.cfg"
JSON_OVERRIDE = Path("etc") / "config_json" / "panda_server_config.json"

_ENV_VALUE = re.compile(
    r"^\$(?:\{\{(?P<double>[A-Za-z_]\w*)\}\}|\{(?P<braced>[A-Za-z_]\w*)\}|(?P<plain>[A-Za-z_]\w*))$")
_ENV_INSIDE = re.compile(r"\$(?:\{\{(?P<double>[A-Za-z_]\w*)\}\}|\{(?P<braced>[A-Za-z_]\w*)\})")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def candidate_paths(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The files read, in order (later wins), when no ``-c FILE`` is given."""
    env = _env(environ)
    home = env.get("HOME") or os.path.expanduser("~")
    paths = [Path("/etc/panda") / CONFIG_NAME, Path("/usr/etc/panda") / CONFIG_NAME,
             Path(home) / "etc" / "panda" / CONFIG_NAME]
    panda_home = env.get("PANDA_HOME")
    if panda_home:
        paths += [Path(panda_home) / "etc" / "panda" / CONFIG_NAME,
                  Path(panda_home) / "usr" / "etc" / "panda" / CONFIG_NAME]
    return paths


def json_override_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The PanDA server's JSON override file (None when ``$PANDA_HOME`` is not set)."""
    panda_home = _env(environ).get("PANDA_HOME")
    return Path(panda_home) / JSON_OVERRIDE if panda_home else None


def _explicit_sources(explicit: str) -> list[Path]:
    given = Path(explicit)
    parts = [given] if given.exists() or os.pathsep not in explicit else \
        [Path(part) for part in explicit.split(os.pathsep) if part]
    for path in parts:
        if path.is_dir():
            inside = path / CONFIG_NAME
            hint = (f"; did you mean {inside}?" if inside.is_file()
                    else f" (it holds no {CONFIG_NAME})")
            raise ConfigError([f"-c {path} is a directory, not a configuration file{hint}"])
        if not path.is_file():
            raise ConfigError([f"configuration file not found: {path} (given with -c)"])
    return parts


def find_config_sources(explicit: str | None,
                        environ: Mapping[str, str] | None = None) -> list[Path]:
    """The files to read, in order; raise ConfigError naming every path tried."""
    if explicit is not None:  # absolute: a master re-reads them from "/" after detaching
        return [path.absolute() for path in _explicit_sources(explicit)]
    tried = candidate_paths(environ)
    found = [path for path in tried if path.is_file()]
    if not found:
        hint = "" if _env(environ).get("PANDA_HOME") else " ($PANDA_HOME is not set)"
        raise ConfigError(["no configuration file found; tried: "
                           + ", ".join(str(p) for p in tried) + hint
                           + "; give one with -c FILE"])
    override = json_override_path(environ)
    if override is not None and override.is_file():
        found.append(override)
    return found


def main_source(sources: list[Path]) -> Path:
    """The file messages name by default: the last ``.cfg`` file read."""
    ini = [path for path in sources if path.suffix != ".json"]
    return ini[-1] if ini else sources[-1]


@dataclass
class RawConfig:
    """The merged sections, and which file gave each key (for messages)."""

    sources: list[Path]
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    origins: dict[tuple[str, str], Path] = field(default_factory=dict)

    def has_section(self, name: str) -> bool:
        return name in self.sections


def _new_parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    return parser


def _read_ini(parser: configparser.ConfigParser, path: Path) -> None:
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError([f"{path}: cannot parse: line {exc.lineno} comes before any"
                           " [section] header (the line is not shown: it may hold a secret);"
                           " start the file with a section such as [daemon]"]) from None
    except configparser.ParsingError as exc:
        numbers = [str(number) for number, _ in exc.errors]
        which = (f"line {numbers[0]} is" if len(numbers) == 1
                 else f"lines {', '.join(numbers)} are")
        raise ConfigError([f"{path}: cannot parse: {which} not 'key = value' (nor a [section],"
                           " a comment or an indented continuation; not shown: it may hold a"
                           " secret); write each setting as 'key = value'"]) from None
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        raise ConfigError([f"{path}: cannot parse: {exc}"]) from None


def read_parser(path: Path) -> configparser.ConfigParser:
    """Parse one file as INI without interpolation (values are taken literally)."""
    parser = _new_parser()
    _read_ini(parser, path)
    return parser


def _json_text(path: Path, section: str, key: str, value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, dict | list) and key == "config":
        return json.dumps(value)
    raise ConfigError([f"{path}: section {section!r} key {key!r} must be a string, number or"
                       f" boolean, got a JSON {type(value).__name__}"])


def _read_override(path: Path, raw: RawConfig) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}:"
                           f" {exc.msg}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a JSON object of sections, like"
                           ' {"daemon": {"n_proc": 4}}'])
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError([f"{path}: section {section!r} must be a JSON object of keys"])
        target = raw.sections.setdefault(section, {})
        for key, value in values.items():
            target[key] = _json_text(path, section, key, value)
            raw.origins[(section, key)] = path


def read_sources(sources: list[Path]) -> RawConfig:
    """Read every source in order: INI files merged (later wins), JSON overrides applied."""
    raw = RawConfig(sources=list(sources))
    merged = _new_parser()
    ini = [path for path in sources if path.suffix != ".json"]
    for path in ini:
        alone = read_parser(path)
        _read_ini(merged, path)
        for section in alone.sections():
            for key in alone.options(section):
                raw.origins[(section, key)] = path
    for section in merged.sections():
        raw.sections[section] = dict(merged.items(section))
    for path in sources:
        if path.suffix == ".json":
            _read_override(path, raw)
    return raw


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """A value that is exactly ``$VAR``, ``${VAR}`` or ``${{VAR}}`` is read from the
    environment, and so is every ``${VAR}`` (or ``${{VAR}}``) inside a value, as in
    ``postgresql+psycopg2://panda:${PASSWORD}@db/panda``. A bare ``$`` inside a value stays
    (a password may hold one). Raises KeyError with the variable name when it is unset."""
    env = _env(environ)
    match = _ENV_VALUE.match(value.strip())
    if match is not None:
        name = match.group("double") or match.group("braced") or match.group("plain")
        if name not in env:
            raise KeyError(name)
        return env[name]

    def variable(found: re.Match[str]) -> str:
        name = found.group("double") or found.group("braced")
        if name not in env:
            raise KeyError(name)
        return env[name]

    return _ENV_INSIDE.sub(variable, value)


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

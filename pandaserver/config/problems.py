"""Configuration problems: one clear message per bad input."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pandaserver.config.secrets import is_secret_name, redact


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration.

    ``script`` is None for problems of the ``[daemon]`` section itself.
    """

    path: str
    message: str
    script: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.path} [daemon]"
        if self.script is not None:
            where += f" config script {self.script!r}"
        if self.key is not None:
            where += f" key {self.key!r}"
        return redact(f"{where}: {self.message}")


class ConfigError(Exception):
    """The configuration cannot be used at all (no file, no section, unusable values)."""

    def __init__(self, problems: Iterable[ConfigProblem | str]) -> None:
        self.problems = [redact(str(p)) for p in problems]
        super().__init__("\n".join(self.problems))


NOT_SHOWN = "not shown: the value of an unknown key may be a secret"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://\S*$")


def may_show(value: object) -> bool:
    """May the value of an unknown key be quoted? Nobody knows what an unknown key holds
    (``db_pw``, a mistyped ``dbpasswd``): only a number, a boolean or a URL (its userinfo
    and other secrets hidden) is shown, which is what a typo of a known key usually holds."""
    if isinstance(value, bool | int | float) or value is None:
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(_NUMBER.match(text) or text in ("True", "False") or _URL.match(text))


def shown_value(key: str, value: str) -> str:
    """The value of an unknown ``[daemon]`` key, quoted for a message: hidden when the key's
    name suggests a secret or ``may_show`` says no, else without any secret it may hold."""
    if is_secret_name(key):
        return "hidden: its name suggests a secret"
    if not may_show(value):
        return NOT_SHOWN
    cleaned = redact(value)
    return repr(cleaned) + (" (secrets hidden)" if cleaned != value else "")


def shown_json(value: object) -> str:
    """The JSON value of an unknown key of a script's entry, for a message (``may_show``)."""
    return redact(json.dumps(value)) if may_show(value) else NOT_SHOWN


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|$)(?P<key>\s*:)?')


def masked_json_line(line: str) -> str:
    """A line of JSON for a message: its names and punctuation as written, every string
    value as ``"***"`` (a line of a broken ``config`` value may hold a password)."""
    def mask(match: re.Match[str]) -> str:
        if match.group("key"):
            return match.group(0)
        return '"***"' if match.group(0).endswith('"') and len(match.group(0)) > 1 else '"***'
    return _JSON_STRING.sub(mask, line)


def shown_seconds(seconds: float) -> str:
    """A bound in seconds for a message: ``30 s``, or ``365 days (31536000 s)``."""
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days ({seconds:.0f} s)"
    return f"{seconds:g} s"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' when ``word`` is close to one of ``choices``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""

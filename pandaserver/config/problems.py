"""Configuration problems: one clear message per bad input."""

from __future__ import annotations

import difflib
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


def shown_value(key: str, value: str) -> str:
    """A value quoted for a message: hidden when the key's name suggests a secret, and
    without the userinfo of a URL or any other secret it may hold."""
    if is_secret_name(key):
        return "hidden: its name suggests a secret"
    cleaned = redact(value)
    return repr(cleaned) + (" (secrets hidden)" if cleaned != value else "")


def shown_seconds(seconds: float) -> str:
    """A bound in seconds for a message: ``30 s``, or ``365 days (31536000 s)``."""
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days ({seconds:.0f} s)"
    return f"{seconds:g} s"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' when ``word`` is close to one of ``choices``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""

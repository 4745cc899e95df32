"""Secrets never leave the process: values of secret-named keys, URL userinfo, passwords.

``redact(text)`` is applied to every message panda-daemon writes about the configuration,
and ``RedactingFilter`` to every log record of the master and the commands (stderr and
the service's log files). Three things are hidden:

1. every value registered with ``register`` (the configuration loader registers the value
   of every key whose name suggests a secret, and every password found in a URL), wherever
   it appears, raw or URL-quoted;
2. the userinfo of anything shaped like a URL (``scheme://user:PASSWORD@host`` keeps the
   user, ``scheme://TOKEN@host`` loses all of it), up to the last ``@`` of the address, so
   a password holding ``@`` or ``/`` is hidden whole;
3. ``name=value``, ``name: value``, ``"name": "value"`` and ``--name value`` where the
   name suggests a secret.

It hides nothing else: a path like ``db-secret.cfg: cannot parse`` keeps its words, a
quote closing ``"--password=..."`` stays, and the user of a database URL without a
password (``postgresql://postgres@host/db``) is a user name, not a token.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "***"

# A key whose name suggests a secret: its value is never shown ("pw" only as a word of
# the name, as in db_pw: inside a word it is too common).
SECRET_NAME = re.compile(r"pass|pwd|secret|token|key|credential|(?<![a-z])pw(?![a-z])",
                         re.IGNORECASE)
# Inside free text, "key" alone is too common a word ("key 'n_proc'"): only these forms.
_SECRET_STEM = re.compile(r"pass|pwd|secret|token|credential|api_?key|private_?key|access_?key",
                          re.IGNORECASE)
# A name before its value: "name": (JSON), name= , name: (no dot: "db-secret.cfg: cannot
# parse" names no value) and an option before its value (--password VALUE). A name is taken
# whole, only where a token starts (not inside a path or a longer word), and tested for a
# secret word afterwards: each pattern runs in linear time, whatever a script's error holds.
# A name in single quotes followed by ":" is panda-daemon's own "key 'x': message" form.
_NAME = re.compile(
    r"\"(?P<json>[\w.\-]{1,200}+)\"\s*:\s*"
    r"|(?<![\w.\-/\\])(?P<assign>[\w.\-]++)\s*=\s*"
    r"|(?<![\w.\-/\\])(?P<label>[\w\-]++)\s*:\s*"
    r"|(?<![\w\-])(?P<option>--?[\w.\-]++)[ \t]+(?=[^\s\-])")
# an unquoted value ends at a space, a separator or a quote (the quote is not its own)
_VALUE = re.compile(r"\"[^\"]*\"|'[^']*'|[^\s,;}\]\"'<>]++")
# Database URLs: a userinfo without ":" is a user name, not a token.
_DB_SCHEMES = {"postgresql", "postgres", "pgsql", "mysql", "mariadb", "sqlite", "oracle",
               "mssql", "cockroachdb"}
# scheme://userinfo@ : the userinfo runs to the last "@" before a space or quote.
_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*+://)"
    r"(?P<info>[^\s\"'<>@]*+(?:@[^\s\"'<>@]*+)*)@")

# Values too common to hide everywhere they appear (booleans, None, tiny values).
_TRIVIAL = {"true", "false", "none", "null", "yes", "no", "fixme", "changeme", ""}
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()


def is_secret_name(name: str) -> bool:
    """Does this key name suggest a secret (pass, pwd, secret, token, key, credential)?"""
    return SECRET_NAME.search(name) is not None


def register(value: str | None) -> None:
    """Hide ``value`` in every later message and log line of this process."""
    if value is None:
        return
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH or value.lower() in _TRIVIAL:
        return
    forms = {value, quote(value, safe=""), quote(value)}
    with _lock:
        _secrets.update(form for form in forms if len(form) >= MIN_SECRET_LENGTH)


def option_values(arguments: Iterable[object]) -> list[str]:
    """The values of secret-named options in a command line: ``--password VALUE`` (the
    item after the option) and ``--password=VALUE``."""
    found: list[str] = []
    items = [str(item) for item in arguments]
    for index, item in enumerate(items):
        if not item.startswith("-"):
            continue
        name, equals, value = item.partition("=")
        if not is_secret_name(name.lstrip("-")):
            continue
        if equals:
            found.append(value)
        elif index + 1 < len(items) and not items[index + 1].startswith("-"):
            found.append(items[index + 1])
    return found


def forget_all() -> None:
    """Forget every registered secret (for tests that load many configurations)."""
    with _lock:
        _secrets.clear()


def registered() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def url_password(text: str) -> str | None:
    """The password of ``scheme://user:password@host/...`` read as a person would (up to the
    last ``@`` of the address), or the whole userinfo when it has no ``:``; None if none."""
    match = _USERINFO.search(text)
    if match is None:
        return None
    info = match.group("info")
    user, colon, password = info.partition(":")
    if colon:
        return password or None
    return None if _is_database(match.group("scheme")) else (user or None)


def _is_database(scheme: str) -> bool:
    """``postgresql+psycopg2://`` and the like: their userinfo names a user first."""
    return scheme[:-3].split("+", 1)[0].lower() in _DB_SCHEMES


def url_secrets(text: str) -> list[str]:
    """What of a URL in ``text`` must never be shown: its password (or token), and, when the
    password holds an unescaped ``@``, the "host" a URL parser would read from its tail
    (``u:pa@ss@db`` gives the host ``ss@db``, which would show ``ss``)."""
    password = url_password(text)
    if password is None:
        return []
    found = [password]
    if "@" in password:
        match = _USERINFO.search(text)
        assert match is not None
        after = text[match.end():]
        host = re.split(r"[/:?\s\"']", after, maxsplit=1)[0]
        found.append(f"{password.split('@', 1)[1]}@{host}")
    return found


def _mask_userinfo(match: re.Match[str]) -> str:
    info = match.group("info")
    user, colon, _ = info.partition(":")
    if colon and "@" not in user:
        return f"{match.group('scheme')}{user}:{MASK}@"
    if not colon and "@" not in user and _is_database(match.group("scheme")):
        return match.group(0)  # a user without a password
    return f"{match.group('scheme')}{MASK}@"


def _mask_named(text: str) -> str:
    """``text`` with the value after each secret-named name (see ``_NAME``) masked."""
    parts: list[str] = []
    pos = done = 0
    while (found := _NAME.search(text, pos)) is not None:
        pos = found.end()
        name = next(group for group in found.group("json", "assign", "label", "option")
                    if group)
        if _SECRET_STEM.search(name) is None:
            continue  # its value is read on: it may be "name=value" itself
        value = _VALUE.match(text, pos)
        if value is None:
            continue
        raw = value.group(0)
        if raw.strip("\"'") != MASK:
            quote_char = raw[0] if raw[:1] in ("'", '"') else ""
            parts += [text[done:pos], quote_char, MASK, quote_char]
            done = value.end()
        pos = value.end()
    parts.append(text[done:])
    return "".join(parts)


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***`` (see the module docstring)."""
    if not text:
        return text
    for secret in sorted(registered(), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(_mask_userinfo, text)
    return _mask_named(text)


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string redacted on
    its own, names included; the text as a whole is never scanned, so the structure stays."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_handler(handler: logging.Handler) -> logging.Handler:
    """Add the redacting filter to ``handler`` once; returns it."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())
    return handler


class RedactingStream:
    """A text stream that writes everything through ``redact`` (the command's own stdout
    and stderr: what ``print`` writes leaves the process as cleanly as log records)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_std_streams() -> None:
    """Put ``sys.stdout`` and ``sys.stderr`` behind ``RedactingStream`` (once)."""
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)

"""Is a database error a refusal of the credentials (a configuration to fix), rather than
an outage (which the master rides out by itself)?

A wrong password does not heal: a master that met it at start would retry for ever, and
no sync script would ever run. ``check-config --connect`` reports it as an error of the
configuration, and a master refuses to start on it.
"""

from __future__ import annotations

# the server's own words (libpq/PostgreSQL, any authentication method; PyMySQL's text)
_REFUSALS = (
    "password authentication failed",
    "authentication failed for user",  # peer, ident, scram, md5, ...
    "no password supplied",
    "access denied for user",
)
# MySQL/MariaDB error numbers: ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD_ERROR
_MYSQL_CODES = (1045, 1698)


def credentials_refused(exc: BaseException) -> bool:
    """True when the database answered and refused the user or password of the URL."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CODES:
        return True
    text = str(orig).lower()
    if 'role "' in text and "does not exist" in text:  # PostgreSQL: no such user
        return True
    return any(words in text for words in _REFUSALS)

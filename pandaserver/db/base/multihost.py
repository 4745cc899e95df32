"""Database URLs that list several hosts: a primary and its standbys (pure text, no driver).

libpq (PostgreSQL's client library, under psycopg2) tries the hosts of a connection in
order and, with ``target_session_attrs=read-write``, keeps the first that accepts writes:
so after a standby is promoted, a master finds the new primary at its next connection.
Two spellings are accepted in ``[daemon] db_url``:

- libpq's own, hosts in the authority:
  ``postgresql+psycopg2://user:pw@db1:5432,db2:5432/panda?target_session_attrs=read-write``
- SQLAlchemy's, one ``host`` query parameter per host:
  ``postgresql+psycopg2://user:pw@/panda?host=db1:5432&host=db2:5432&target_session_attrs=read-write``

SQLAlchemy parses only the second, so ``normalize`` rewrites the first into it before the
URL is parsed. ``problem`` says what is wrong with a URL listing several hosts (a backend
whose driver connects to one host only; no session attribute asking for the primary).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote

PRIMARY_ATTRS = ("read-write", "primary")  # libpq target_session_attrs that find the primary
EXAMPLE = ("postgresql+psycopg2://USER:PASSWORD@HOST1:5432,HOST2:5432/DBNAME"
           "?target_session_attrs=read-write")


def _split(raw: str) -> tuple[str, str, str, str] | None:
    """(scheme with ``://``, userinfo with ``@`` or '', host list, the rest from ``/`` or
    ``?``), or None when ``raw`` has no authority."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return None
    end = len(rest)
    for mark in "/?":
        found = rest.find(mark, rest.rfind("@") + 1)  # a password may hold '/' or '?'
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hosts = authority.rpartition("@")
    return scheme + sep, userinfo + at, hosts, tail


def listed_hosts(raw: str) -> list[str]:
    """The hosts (``host`` or ``host:port``) a URL names, in either spelling."""
    parts = _split(raw.strip())
    if parts is None:
        return []
    _, _, hosts, tail = parts
    found = [h for h in hosts.split(",") if h]
    query = tail.partition("?")[2]
    found += [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "host"]
    return found


def normalize(raw: str) -> str:
    """``raw`` with a comma-separated host list in its authority moved into ``host`` query
    parameters (the form SQLAlchemy parses); any other URL unchanged."""
    parts = _split(raw.strip())
    if parts is None or "," not in parts[2]:
        return raw
    scheme, userinfo, hosts, tail = parts
    path, qmark, query = tail.partition("?")
    params = "&".join(f"host={quote(h, safe=':[]')}" for h in hosts.split(",") if h)
    return f"{scheme}{userinfo}{path or '/'}?{params}{'&' + query if qmark and query else ''}"


def problem(raw: str) -> str | None:
    """What is wrong with ``raw`` as a URL of several hosts (None: fine, or one host)."""
    hosts = listed_hosts(raw)
    if len(hosts) < 2:
        return None
    scheme = raw.strip().partition("://")[0].lower()
    if not scheme.startswith("postgres"):
        return (f"it lists {len(hosts)} hosts, and only PostgreSQL's driver tries several"
                " hosts (the MySQL/MariaDB driver connects to one): name one host, a"
                " proxy or a virtual address that follows the primary (docs/database.md,"
                " \"Failover of the database\")")
    parts = _split(raw.strip())
    query = parts[3].partition("?")[2] if parts is not None else ""
    attrs = dict(parse_qsl(query)).get("target_session_attrs", "")
    if attrs not in PRIMARY_ATTRS:
        got = f"target_session_attrs={attrs}" if attrs else "no target_session_attrs"
        return (f"it lists {len(hosts)} hosts with {got}: a master could connect to a"
                " standby, which refuses every write; add target_session_attrs=read-write,"
                f" as in {EXAMPLE}")
    return None

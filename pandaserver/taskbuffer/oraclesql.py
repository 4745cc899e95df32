"""The few Oracle-isms of PanDA scripts' SQL that are rewritten for the database in use.

Only what is cheap and safe, and only outside string literals, quoted identifiers and
comments:

- the schema prefixes ``ATLAS_PANDA.``, ``ATLAS_PANDAMETA.``, ``ATLAS_GRISLI.`` and
  ``ATLAS_PANDAARCH.`` become the ``[server]`` ``schemaPANDA``, ``schemaMETA``,
  ``schemaGRISLI`` and ``schemaPANDAARCH`` of the configuration, as PanDA does; where the
  key is not set (and always on SQLite, which has no schemas) the prefix is dropped, so the
  table is found on the connection's own schema or search path;
- ``SYSDATE`` and ``CURRENT_DATE`` become the database's current UTC time, and
  ``SYSDATE - N`` / ``CURRENT_DATE + N`` (N days, as in Oracle: a number, ``A/B``, a bind
  variable, ``:n/B``, either in parentheses) become that time shifted by N days.

Anything else (``ROWNUM``, ``NVL``, ``DECODE``, ``FROM dual``, sequences, ``RETURNING ...
INTO``, ``MINUS``, ``(+)`` joins, date arithmetic of other shapes) is left as written;
``untranslated_hint`` names it when a statement fails, so the message says what to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.functions import FunctionElement

from pandaserver.db.base.servertime import db_now_expr, db_now_plus

# PanDA's schema names and the [server] keys that rename them
SCHEMA_KEYS = {"ATLAS_PANDA": "schemaPANDA", "ATLAS_PANDAMETA": "schemaMETA",
               "ATLAS_GRISLI": "schemaGRISLI", "ATLAS_PANDAARCH": "schemaPANDAARCH"}

_SCHEMA = re.compile(r"(?<![\w.$])(ATLAS_PANDAMETA|ATLAS_PANDAARCH|ATLAS_PANDA|ATLAS_GRISLI)"
                     r"\s*\.\s*", re.IGNORECASE)
_NUMBER = r"\d+(?:\.\d+)?"
_OPERAND = rf"(?:{_NUMBER}|:\w+)(?:\s*/\s*{_NUMBER})?"
# SYSDATE alone, or plus/minus a day count that ends there (``SYSDATE - 1*2`` is left as
# written, so it fails with a hint instead of meaning something else)
_DATE = re.compile(
    rf"(?<![\w.$:])(SYSDATE|CURRENT_DATE)(?![\w$(])"
    rf"(?:\s*(?P<sign>[-+])\s*(?P<operand>{_OPERAND}|\(\s*{_OPERAND}\s*\))(?![\w.(]|\s*[*/])"
    rf"|(?!\s*[-+]))",
    re.IGNORECASE)
_ORACLE_ONLY = re.compile(
    r"(?<![\w.$])(ROWNUM|NVL2?|DECODE|SYSTIMESTAMP|SYSDATE|CURRENT_DATE|DUAL|NEXTVAL|CURRVAL"
    r"|MINUS|TO_DATE|TO_CHAR|TRUNC)(?![\w$])|\(\+\)|\bRETURNING\s+.+?\s+INTO\b",
    re.IGNORECASE | re.DOTALL)
# a quoted string, a quoted identifier, a comment: copied as they are
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def code_parts(sql: str) -> Iterator[tuple[bool, str]]:
    """``sql`` in pieces, each ``(is_code, text)``: code, or a literal/identifier/comment."""
    pos = 0
    for match in _QUOTED.finditer(sql):
        if match.start() > pos:
            yield True, sql[pos:match.start()]
        yield False, match.group(0)
        pos = match.end()
    if pos < len(sql):
        yield True, sql[pos:]


def first_keyword(sql: str) -> str:
    """The statement's first word, upper case (comments, spaces and parentheses skipped)."""
    for is_code, part in code_parts(sql):
        if not is_code:
            if part.startswith(("--", "/*")):
                continue
            return ""
        match = re.search(r"[^\s(]", part)
        if match is None:
            continue
        word = re.match(r"\w+", part[match.start():])
        return word.group(0).upper() if word else ""
    return ""


def translate(sql: str, dialect: Dialect, schemas: Mapping[str, str | None]) -> str:
    """``sql`` with the schema prefixes and Oracle dates rewritten for ``dialect``.
    ``schemas``: PanDA's schema name -> the name to use (None or "": drop the prefix)."""
    out = []
    for is_code, part in code_parts(sql):
        if is_code:
            part = _SCHEMA.sub(lambda m: _schema(m, dialect, schemas), part)
            part = _DATE.sub(lambda m: _date(m, dialect), part)
        out.append(part)
    return "".join(out)


def _schema(match: re.Match[str], dialect: Dialect, schemas: Mapping[str, str | None]) -> str:
    target = schemas.get(match.group(1).upper())
    if dialect.name == "sqlite" or not target:
        return ""
    return f"{target}."


def _date(match: re.Match[str], dialect: Dialect) -> str:
    operand = match.group("operand")
    expr: FunctionElement[Any]
    if operand is None:
        expr = db_now_expr()
    else:
        body = operand.strip()
        if body.startswith("("):
            body = body[1:-1].strip()
        sign = "-" if match.group("sign") == "-" else ""
        expr = db_now_plus(literal_column(f"({sign}86400.0 * {_days(body)})"))
    return f"({expr.compile(dialect=dialect)})"


def _days(body: str) -> str:
    """An Oracle day count as SQL giving a fractional number on every backend (``1/24``
    is an integer 0 on PostgreSQL and SQLite: the division is made in floating point)."""
    head, _, divisor = (piece.strip() for piece in body.partition("/"))
    if divisor:
        return f"{head} / {float(divisor)!r}"
    return head


def untranslated_hint(sql: str) -> str | None:
    """The Oracle-only words a statement still holds after ``translate`` (a hint for a
    failed statement), or None."""
    found = []
    for is_code, part in code_parts(sql):
        if is_code:
            found += [m.group(0).split()[0].upper() for m in _ORACLE_ONLY.finditer(part)]
    if not found:
        return None
    words = ", ".join(dict.fromkeys(found))
    return (f"the statement uses Oracle SQL not translated for this database ({words}):"
            " write it for this database (docs/database.md, \"What is translated\")")

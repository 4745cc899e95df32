"""PanDA's configuration table (``panda_config``): typed values by app, component, key and
VO, read by ``tbuf.getConfigValue`` and managed by ``panda-daemon config-value``.

A value is kept as text with its type, as in PanDA: ``str``/``string``, ``int``/``integer``,
``float``, ``bool``/``boolean`` (``true``, any case, is True; anything else False) and
``json`` (the text in ``value_json``). ``convert`` turns a row into its Python value, or
says why it cannot; ``ConfigStore`` reads and writes rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, or_, select

from pandaserver.db.base.servertime import db_now_expr
from pandaserver.db.base.tables import panda_config
from pandaserver.db.base.upsert import conditional_upsert

DEFAULT_APP = "pandaserver"
TYPES = {"str": "str", "string": "str", "int": "int", "integer": "int", "float": "float",
         "bool": "bool", "boolean": "bool", "json": "json"}
TYPE_NAMES = ("str", "int", "float", "bool", "json")  # what config-value set offers


class BadValue(ValueError):
    """A row whose value does not read as its type (the message says which and why)."""


def convert(type_name: str | None, value: str | None, value_json: str | None) -> Any:
    """The Python value of a row, as PanDA's getConfigValue converts it; BadValue when the
    type is unknown or the value does not read as it."""
    kind = TYPES.get((type_name or "").strip().lower())
    if kind is None:
        raise BadValue(f"unknown type {type_name!r} (allowed: {', '.join(TYPES)})")
    try:
        if kind == "str":
            return value
        if kind == "int":
            return int(str(value))
        if kind == "float":
            return float(str(value))
        if kind == "bool":
            return str(value).lower() == "true"
        return json.loads(value_json if value_json is not None else str(value))
    except ValueError as exc:  # json.JSONDecodeError is one
        raise BadValue(f"value {value if kind != 'json' else value_json!r} is not a valid"
                       f" {kind}: {exc}") from None


def vo_filter(vo: str | None) -> Any:
    """PanDA's rule: with a VO, its own rows and the rows for every VO (vo NULL); without
    one, any row."""
    t = panda_config
    return or_(t.c.vo == vo, t.c.vo.is_(None)) if vo else None


def lookup(component: str, key: str, app: str, vo: str | None) -> Any:
    """The statement getConfigValue runs: (value, value_json, type) of the row, if any."""
    t = panda_config
    stmt = select(t.c.value, t.c.value_json, t.c.type).where(
        t.c.app == app, t.c.component == component, t.c.key == key)
    condition = vo_filter(vo)
    return stmt if condition is None else stmt.where(condition)


@dataclass(frozen=True)
class ConfigRow:
    app: str
    component: str
    key: str
    vo: str | None
    value: str
    value_json: str | None
    type: str
    descr: str | None
    modified_by: str | None
    modified_at: datetime | None


class ConfigStore:
    """Rows of ``panda_config`` on ``engine`` (the command layer's side)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def set(self, *, app: str, component: str, key: str, vo: str | None, value: str,
            type_name: str, descr: str | None, who: str) -> None:
        """Insert or replace the row of (app, component, key); the value must read as its
        type (BadValue otherwise, nothing written)."""
        kind = TYPES.get(type_name.strip().lower())
        if kind is None:
            raise BadValue(f"unknown type {type_name!r} (allowed: {', '.join(TYPE_NAMES)})")
        value_json = value if kind == "json" else None
        convert(kind, value, value_json)
        t = panda_config
        fields = {"vo": vo or None, "value": value, "value_json": value_json, "type": kind,
                  "descr": descr, "modified_by": who, "modified_at": db_now_expr()}
        with self.engine.begin() as conn:
            conditional_upsert(conn, t, {"app": app, "component": component, "key": key,
                                         **fields}, ["app", "component", "key"], fields, None,
                               [t.c.key])

    def rows(self, app: str | None = None, component: str | None = None,
             key: str | None = None, vo: str | None = None) -> list[ConfigRow]:
        t = panda_config
        stmt = select(*t.c).order_by(t.c.app, t.c.component, t.c.key)
        for column, wanted in ((t.c.app, app), (t.c.component, component), (t.c.key, key)):
            if wanted is not None:
                stmt = stmt.where(column == wanted)
        condition = vo_filter(vo)
        if condition is not None:
            stmt = stmt.where(condition)
        with self.engine.connect() as conn:
            return [ConfigRow(**row._mapping) for row in conn.execute(stmt)]

    def delete(self, *, app: str, component: str, key: str) -> bool:
        """Remove the row; False when there was none."""
        t = panda_config
        with self.engine.begin() as conn:
            removed = conn.execute(delete(t).where(
                t.c.app == app, t.c.component == component, t.c.key == key)).rowcount
        return bool(removed)


"""``panda-daemon config-value set|get|list|delete``: the rows of PanDA's configuration
table (``panda_config``) that scripts read with ``tbuf.getConfigValue``.

Each row is (app, component, key) with a VO (none: every VO), a value, its type and a
description; ``set`` records who (the OS user and host) and when (the database's clock).
This module imports no database code at import time: ``panda-daemon --help`` and the
commands that do not touch the database stay fast.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from pandaserver import exitcodes
from pandaserver.commands.messages import err
from pandaserver.config import PandaConfig

if TYPE_CHECKING:
    from pandaserver.taskbuffer.configtable import ConfigRow

DEFAULT_APP = "pandaserver"  # as tbuf.getConfigValue
TYPE_NAMES = ("str", "int", "float", "bool", "json")
NAME_LIMITS = {"app": 64, "component": 64, "key": 64, "vo": 32}  # the columns' lengths


def _name(what: str) -> Any:
    limit = NAME_LIMITS[what]

    def parse(text: str) -> str:
        if not text.strip() or text != text.strip() or len(text) > limit:
            raise argparse.ArgumentTypeError(
                f"{what} must be 1 to {limit} characters without surrounding spaces,"
                f" got: {text!r}")
        return text
    parse.__name__ = what
    return parse


def add_config_value(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "config-value", help="set, show or delete the values scripts read with"
                             " tbuf.getConfigValue")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def where(p: argparse.ArgumentParser, vo_help: str) -> None:
        p.add_argument("--app", type=_name("app"), default=DEFAULT_APP,
                       help=f"the application (default: {DEFAULT_APP})")
        p.add_argument("--vo", type=_name("vo"), default=None, help=vo_help)

    set_ = actions.add_parser("set", help="create or replace a value")
    set_.add_argument("component", type=_name("component"))
    set_.add_argument("key", type=_name("key"))
    set_.add_argument("value", help="the value as text (json: a JSON document)")
    set_.add_argument("--type", dest="type_name", choices=TYPE_NAMES, default="str",
                      help="how the value is read (default: str)")
    set_.add_argument("--descr", default=None, help="what the value is for")
    where(set_, "only this VO sees it (default: every VO)")

    get = actions.add_parser("get", help="print a value as a script would get it")
    get.add_argument("component", type=_name("component"))
    get.add_argument("key", type=_name("key"))
    get.add_argument("--json", action="store_true", help="the whole row as JSON")
    where(get, "as a script asking for this VO (default: any VO)")

    list_ = actions.add_parser("list", help="the values, with who set them and when")
    list_.add_argument("--component", type=_name("component"), default=None)
    list_.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    list_.add_argument("--app", type=_name("app"), default=None,
                       help="only this application (default: all)")
    list_.add_argument("--vo", type=_name("vo"), default=None,
                       help="only what this VO sees (default: all)")

    delete = actions.add_parser("delete", help="remove a value (scripts get their default)")
    delete.add_argument("component", type=_name("component"))
    delete.add_argument("key", type=_name("key"))
    delete.add_argument("--app", type=_name("app"), default=DEFAULT_APP,
                        help=f"the application (default: {DEFAULT_APP})")
    parser.set_defaults(func=cmd_config_value)


def cmd_config_value(cfg: PandaConfig, args: argparse.Namespace) -> int:
    from pandaserver.commands.database import CommandFailed, open_database, run_command
    from pandaserver.preflight.dbsettings import ERROR, database_findings
    from pandaserver.taskbuffer.configtable import ConfigStore

    errors = [message for level, message, _ in database_findings(cfg)[1] if level == ERROR]
    if errors:
        for message in errors:
            err(message)
        return exitcodes.RET_CONFIG

    def body() -> int:
        with open_database(cfg) as engine:
            store = ConfigStore(engine)
            try:
                return ACTIONS[args.action](store, args)
            except ValueError as exc:  # a value that does not read as its type
                raise CommandFailed(str(exc), exitcodes.RET_CONFIG) from None

    return run_command(body)


def _set(store: Any, args: argparse.Namespace) -> int:
    from pandaserver.commands.operator import requester

    who = requester()
    store.set(app=args.app, component=args.component, key=args.key, vo=args.vo,
              value=args.value, type_name=args.type_name, descr=args.descr, who=who)
    vo = f" for VO {args.vo}" if args.vo else ""
    print(f"{args.app} {args.component} {args.key} = {args.value!r} ({args.type_name}{vo}),"
          f" set by {who}")
    return exitcodes.RET_OK


def _one(store: Any, args: argparse.Namespace) -> ConfigRow | None:
    rows = store.rows(app=args.app, component=args.component, key=args.key, vo=args.vo)
    return rows[0] if rows else None


def _get(store: Any, args: argparse.Namespace) -> int:
    from pandaserver.taskbuffer.configtable import BadValue, convert

    row = _one(store, args)
    if row is None:
        vo = f" visible to VO {args.vo}" if args.vo else ""
        err(f"no value {args.component} {args.key} in app {args.app}{vo}; scripts get their"
            " default (panda-daemon config-value list shows the values)")
        return exitcodes.RET_FAILED
    if args.json:
        print(json.dumps(_row_json(row), sort_keys=True))
        return exitcodes.RET_OK
    try:
        value = convert(row.type, row.value, row.value_json)
    except BadValue as exc:
        err(f"{row.app} {row.component} {row.key}: {exc}; scripts get their default until it"
            " is set again")
        return exitcodes.RET_FAILED
    print(json.dumps(value) if row.type == "json" else value)
    return exitcodes.RET_OK


def _list(store: Any, args: argparse.Namespace) -> int:
    from pandaserver.fmt import table, when

    rows = store.rows(app=args.app, component=args.component, vo=args.vo)
    if args.json:
        for row in rows:
            print(json.dumps(_row_json(row), sort_keys=True))
        return exitcodes.RET_OK
    if not rows:
        print("no values (panda-daemon config-value set adds one)")
        return exitcodes.RET_OK
    lines = [["APP", "COMPONENT", "KEY", "VO", "TYPE", "VALUE", "SET BY", "SET AT"]]
    for row in rows:
        text = row.value_json if row.type == "json" and row.value_json else row.value
        lines.append([row.app, row.component, row.key, row.vo or "*", row.type,
                      _clip(text), row.modified_by or "-",
                      when(row.modified_at) if row.modified_at else "-"])
    print("\n".join(table(lines)))
    return exitcodes.RET_OK


def _delete(store: Any, args: argparse.Namespace) -> int:
    if not store.delete(app=args.app, component=args.component, key=args.key):
        err(f"no value {args.component} {args.key} in app {args.app}")
        return exitcodes.RET_FAILED
    print(f"{args.app} {args.component} {args.key} deleted")
    return exitcodes.RET_OK


ACTIONS = {"set": _set, "get": _get, "list": _list, "delete": _delete}


def _clip(text: str | None, width: int = 40) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _row_json(row: ConfigRow) -> dict[str, Any]:
    return {"app": row.app, "component": row.component, "key": row.key, "vo": row.vo,
            "value": row.value, "value_json": row.value_json, "type": row.type,
            "descr": row.descr, "modified_by": row.modified_by,
            "modified_at": row.modified_at.isoformat() if row.modified_at else None}

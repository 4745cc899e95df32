"""The WSGI application: the fleet pages, their JSON API, ``/metrics`` and static assets.

Read-only: GET and HEAD only (405 otherwise). Links are relative to ``SCRIPT_NAME``, so
the application may be mounted under any prefix (``WSGIScriptAlias /daemon ...``).

==========================  =========================================================
path                        what
==========================  =========================================================
``/``                       servers: heartbeat, version, config hash, clock offset
``/scripts``                scripts: last run per server, next due, late and stale
``/scripts/NAME``           one script: timeline per server and its runs (``?limit=``)
``/leases``                 the sync scripts' leases
``/api``                    the list of API endpoints
``/api/fleet``              servers, local masters, summary (stale, late, mismatches)
``/api/scripts``            every script, as on ``/scripts``
``/api/scripts/NAME``       one script and its runs (``?limit=``, default 200)
``/api/leases``             the leases
``/metrics``                Prometheus text format
``/static/FILE``            the stylesheet and the refresh script
==========================  =========================================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from pandaserver.config import PandaConfig
from pandaserver.config.secrets import redact, redact_data
from pandaserver.db.base.engine import DatabaseConfigError, describe_db_error
from pandaserver.db.base.schema import SchemaError
from pandaserver.web import pages
from pandaserver.web.fleetview import FleetReader, jsonable
from pandaserver.web.metrics import make_registry
from pandaserver.web.settings import WebSettings

log = logging.getLogger("panda.web")

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
DEFAULT_RUNS = 200
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
SECURITY_HEADERS = [
    # every asset from this application; nothing from another origin, no inline script
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self';"
                                " img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
API_INDEX = {
    "/api/fleet": "servers (heartbeat, version, config hash, clock offset), local masters,"
                  " summary of stale and late scripts",
    "/api/scripts": "every script: period, sync, last run per server, next due, late, stale",
    "/api/scripts/NAME?limit=N": "one script and its newest N runs (default 200, at most 2000)",
    "/api/leases": "the leases of sync scripts",
    "/metrics": "Prometheus text format",
}


class Response:
    def __init__(self, status: str, body: bytes, content_type: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                        *SECURITY_HEADERS, *(headers or [])]


def _json(data: Any, status: str = "200 OK") -> Response:
    body = json.dumps(redact_data(jsonable(data)), indent=1, sort_keys=True).encode("utf-8")
    return Response(status, body, "application/json", [("Cache-Control", "no-store")])


def _html(text: str, status: str = "200 OK") -> Response:
    return Response(status, text.encode("utf-8"), "text/html; charset=utf-8",
                    [("Cache-Control", "no-store")])


def _static(name: str) -> Response | None:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return None
    resource = resources.files("pandaserver.web").joinpath("static").joinpath(name)
    if not resource.is_file():
        return None
    return Response("200 OK", resource.read_bytes(), STATIC_TYPES[suffix],
                    [("Cache-Control", "max-age=300")])


def _limit(environ: Environ) -> int:
    values = parse_qs(environ.get("QUERY_STRING", "")).get("limit")
    try:
        return max(1, int(values[0])) if values else DEFAULT_RUNS
    except ValueError:
        return DEFAULT_RUNS


class FleetApp:
    """``FleetApp(cfg, settings)`` is a WSGI callable."""

    def __init__(self, cfg: PandaConfig, settings: WebSettings | None = None,
                 reader: FleetReader | None = None) -> None:
        self.settings = settings or WebSettings()
        self.reader = reader or FleetReader(cfg, self.settings)
        self.registry, self.collector = make_registry(self.reader)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            response = Response("405 Method Not Allowed", b"read-only: GET and HEAD only\n",
                                "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])
        else:
            response = self.route(environ)
        start_response(response.status, response.headers)
        return [] if method == "HEAD" else [response.body]

    def route(self, environ: Environ) -> Response:
        prefix = environ.get("SCRIPT_NAME", "").rstrip("/")
        path = environ.get("PATH_INFO", "") or "/"
        path = path.encode("latin-1").decode("utf-8", "replace")  # PEP 3333: bytes as latin-1
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["static"] and len(parts) == 2:
            found = _static(parts[1])
            return found or self.not_found(prefix, parts)
        if parts == ["metrics"]:
            return Response("200 OK", self.collector.text(), CONTENT_TYPE_LATEST)
        if parts == ["api"]:
            return _json(API_INDEX)
        api = parts[:1] == ["api"]
        try:
            return self.page(parts[1:] if api else parts, api, prefix, environ)
        except (SQLAlchemyError, SchemaError, DatabaseConfigError) as exc:
            message = redact(describe_db_error(exc, None) if isinstance(exc, SQLAlchemyError)
                             else str(exc))
            log.warning("cannot read the database: %s", message)
            if api:
                return _json({"error": f"database unavailable: {message}"},
                             "503 Service Unavailable")
            return _html(pages.error_page("database unavailable", message, prefix,
                                          self.settings.refresh), "503 Service Unavailable")

    def page(self, parts: list[str], api: bool, prefix: str, environ: Environ) -> Response:
        refresh = self.settings.refresh
        if parts in ([], ["fleet"]):
            ov = self.reader.overview()
            if api:
                return _json({"db_now": ov.db_now, "stale_factor": ov.stale_factor,
                              "servers": ov.servers, "local_masters": ov.local,
                              "summary": ov.summary()})
            return _html(pages.fleet_page(ov, prefix, refresh))
        if parts == ["scripts"]:
            ov = self.reader.overview()
            if api:
                return _json({"db_now": ov.db_now, "stale_factor": ov.stale_factor,
                              "scripts": ov.scripts})
            return _html(pages.scripts_page(ov, prefix, refresh))
        if len(parts) == 2 and parts[0] == "scripts":
            detail = self.reader.script(parts[1], _limit(environ))
            if detail.script is None and not detail.runs:
                return self.not_found(prefix, parts, api, f"no script named {parts[1]!r}")
            if api:
                return _json({"db_now": detail.db_now, "script": detail.script,
                              "runs": detail.runs})
            return _html(pages.script_page(detail, parts[1], prefix, refresh))
        if parts == ["leases"]:
            ov = self.reader.overview()
            if api:
                return _json({"db_now": ov.db_now, "leases": ov.leases})
            return _html(pages.leases_page(ov, prefix, refresh))
        return self.not_found(prefix, parts, api)

    def not_found(self, prefix: str, parts: list[str], api: bool = False,
                  message: str | None = None) -> Response:
        message = message or f"nothing at /{'/'.join(parts)}"
        if api:
            return _json({"error": message}, "404 Not Found")
        return _html(pages.error_page("not found", message, prefix, self.settings.refresh),
                     "404 Not Found")


def create_app(cfg: PandaConfig, settings: WebSettings | None = None) -> FleetApp:
    return FleetApp(cfg, settings)

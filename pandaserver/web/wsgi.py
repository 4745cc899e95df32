"""The WSGI entry file for Apache httpd with mod_wsgi (``WSGIScriptAlias /daemon .../wsgi.py``),
or for any WSGI server (``pandaserver.web.wsgi:application``).

The configuration is found on the first request: ``PANDA_DAEMON_CONFIG`` from the request
environment (Apache ``SetEnv``), else from the process environment, else the usual search
(``$PANDA_HOME/etc/panda/panda_server.cfg``, then ``/etc/panda/panda_server.cfg``).
``SetEnv`` values of ``PANDA_DAEMON_STATE_DIR`` and ``PANDA_HOME`` are copied into the
process environment, where the code reads them.
Until the configuration can be read, every request answers 500 with the reason (also
logged to the server's error log), and the next request tries again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from pandaserver.config import ConfigError, load_config

log = logging.getLogger("panda.web")

PASSED_ENV = ("PANDA_DAEMON_CONFIG", "PANDA_DAEMON_STATE_DIR", "PANDA_HOME")
App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class LazyApplication:
    def __init__(self) -> None:
        self._app: App | None = None
        self._lock = threading.Lock()

    def _load(self, environ: dict[str, Any]) -> App:
        from pandaserver.web.app import FleetApp
        from pandaserver.web.settings import web_settings

        for key in PASSED_ENV[1:]:  # for the code that reads them from os.environ
            value = environ.get(key)
            if isinstance(value, str) and value:
                os.environ[key] = value
        explicit = environ.get(PASSED_ENV[0]) or os.environ.get(PASSED_ENV[0])
        cfg = load_config(explicit if isinstance(explicit, str) and explicit else None)
        return FleetApp(cfg, web_settings(cfg))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        with self._lock:
            if self._app is None:
                try:
                    self._app = self._load(environ)
                except (ConfigError, ValueError, OSError) as exc:
                    reason = "; ".join(str(p) for p in exc.problems) \
                        if isinstance(exc, ConfigError) else str(exc)
                    log.error("panda-daemon web: cannot read the configuration: %s", reason)
                    body = f"panda-daemon web: cannot read the configuration: {reason}\n"
                    data = body.encode("utf-8")
                    start_response("500 Internal Server Error", [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("Content-Length", str(len(data)))])
                    return [data]
            app = self._app
        return app(environ, start_response)


application = LazyApplication()

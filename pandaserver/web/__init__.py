"""The fleet's web pages, JSON API and Prometheus metrics (read-only), and the ``fleet``
and ``logs`` views of the command line (the commands: ``pandaserver.commands.web``).

``create_app(cfg)`` (``pandaserver.web.app``) is the WSGI application;
``pandaserver.web.wsgi`` is the entry file for Apache's mod_wsgi, and ``panda-daemon web``
serves it with gunicorn. See docs/web.md.
"""

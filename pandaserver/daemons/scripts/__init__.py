"""Bundled script modules. Each defines ``main(argv=..., tbuf=..., lock_pool=...)``."""

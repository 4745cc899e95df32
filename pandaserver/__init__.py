"""panda-daemon: the PanDA server daemon, reimplemented."""

from __future__ import annotations

__version__ = "0.1.0"

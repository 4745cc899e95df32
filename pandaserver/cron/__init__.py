"""Convert crontab entries into ``[daemon]`` configuration (``panda-daemon cron2json``).

``parse`` reads crontab lines and cron commands; ``firings`` finds a schedule's firing
pattern (its period); ``convert`` turns them into script entries (period, sync rule) and
prints the ``config`` JSON; the command itself is ``pandaserver.commands.cron``.
See docs/cron-migration.md for the rules and the reasoning behind them.
"""

from __future__ import annotations

from pandaserver.cron.convert import Conversion, Options, Script, convert, read_module_map
from pandaserver.cron.firings import Schedule, analyse_schedule
from pandaserver.cron.parse import CronJob, Diagnostic, read_command, read_crontab

__all__ = [
    "Conversion",
    "CronJob",
    "Diagnostic",
    "Options",
    "Schedule",
    "Script",
    "analyse_schedule",
    "convert",
    "read_command",
    "read_crontab",
    "read_module_map",
]

"""The exit statuses of every ``panda-daemon`` command: one table, one meaning per code.

Every subcommand returns these names and no literal number, so a status means the same
whichever command returned it: an unusable configuration is ``RET_CONFIG`` for ``run`` as
for ``history``, a refused schema ``RET_SCHEMA`` for ``start`` as for ``pause``. Which
commands can return which code is in docs/reference.md, "Exit statuses".

Two conventions are kept where programs outside panda-daemon read the status:

- ``status`` answers in the LSB codes init systems expect: 0 running, 1 dead with a pid
  file left (``RET_STALE_PIDFILE``), 3 not running (``RET_NOT_RUNNING``, which ``reload``
  and ``reopen-logs`` return too when there is no master to signal).
- ``fleet --check`` is a monitoring-plugin check (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN,
  the ``CHECK_*`` names): the one stated exception to the table below, since a monitoring
  system reads 2 as CRITICAL whatever else it means here.
"""

from __future__ import annotations

RET_OK = 0
# The command did not do what was asked; its message says why (run-once: the script
# raised; unlock: no such lease; --wait: not acted on in time; logs: no record to show;
# cron2json: a line not converted; start, stop: the service could not be started or ended).
RET_FAILED = 1
RET_CONFIG = 2  # the configuration, or a command-line argument, is unusable
RET_NOT_RUNNING = 3  # no master runs (LSB status "program is not running")
RET_LOST = 4  # run-once: the script exited the worker or was killed from outside
RET_PIDFILE = 5  # start: another master holds the pid file, or it cannot be written
RET_USER = 6  # uname/gname missing or unusable (started as root)
RET_LEASE = 7  # run-once: a sync script whose lease another server holds
RET_SCHEMA = 8  # the database schema is newer than this code, or not upgraded
RET_DATABASE = 9  # the database does not answer, or fails
RET_TIMEOUT = 10  # run-once: the script was killed at its timeout
# run, start --no-detach (the master's own status), stop: the master stopped, but history of
# runs it could neither write to the database nor keep in its spool file is lost
RET_HISTORY_LOST = 11

# status only: LSB "program is dead and the pid file exists" (RET_FAILED's value)
RET_STALE_PIDFILE = 1

# fleet --check only: the monitoring-plugin convention
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2
CHECK_UNKNOWN = 3

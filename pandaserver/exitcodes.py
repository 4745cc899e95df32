"""Named exit statuses of the ``panda-daemon`` command."""

from __future__ import annotations

RET_OK = 0
RET_FAILED = 1  # run-once: the script raised; other commands: the operation failed
RET_CONFIG = 2  # the configuration (or a command-line argument) is unusable
RET_TIMEOUT = 3  # run-once: the script was killed at its timeout
RET_LOST = 4  # run-once: the script exited the worker or was killed from outside
RET_NOT_RUNNING = 3  # status: LSB "program is not running"
RET_PIDFILE = 5  # start: another master holds the pid file, or it cannot be written
RET_USER = 6  # start: uname/gname missing or unusable (started as root)
RET_STALE_PIDFILE = 1  # status: LSB "program is dead and the pid file exists"
RET_LEASE = 7  # run-once: a sync script whose lease could not be taken
RET_SCHEMA = 8  # the database schema is newer than this code, or not upgraded

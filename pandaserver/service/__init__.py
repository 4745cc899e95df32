"""Running the master as a system service: detach, pid file, privileges, log files, its
stop and status (``lifecycle``), and this host's status files (``hoststatus``).

``panda-daemon start | stop | status | restart | reload | reopen-logs`` live in
``pandaserver.commands.service``; the rc.d scripts and the systemd unit call them.
"""

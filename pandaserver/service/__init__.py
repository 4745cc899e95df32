"""Running the master as a system service: detach, pid file, privileges, log files, control.

``panda-daemon start | stop | status | restart | reload | reopen-logs`` live in
``commands``; the rc.d scripts and the systemd unit call them.
"""

"""Sessions side by side do not touch each other's masters: where cgroups can be made, a
pytest session (each pytest-xdist worker) runs in a cgroup of its own, and its masters make
their subtrees there (tests/guard.py), so a master starting clears only its own session's
gone masters."""

from __future__ import annotations

import os
from pathlib import Path

from guard import CGROUP_PREFIX, TOKEN_VAR
from harness import running_master, write_config

from pandaserver.daemons.containment.cgroups import cgroup_of


def test_a_sessions_masters_make_their_cgroups_in_the_sessions_own(tmp_path: Path) -> None:
    own = cgroup_of()
    assert own is not None, "no cgroup v2 here: this suite's isolation cannot be checked"
    if os.geteuid() != 0 and not os.access(own, os.W_OK):
        return  # neither the session nor its masters can make a cgroup: nothing to share
    assert own.name == f"{CGROUP_PREFIX}{os.environ[TOKEN_VAR]}", own
    cfg = write_config(tmp_path, {"tick": {"module": "record", "period": 60}})
    with running_master(cfg, tmp_path) as master:
        master.wait_events(1, "start", "tick")
        subtree = cgroup_of(master.proc.pid)
        assert subtree is not None and subtree.name == "master", subtree
        assert subtree.parent.parent == own, f"the master's cgroup {subtree} is outside {own}"

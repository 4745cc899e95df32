"""Started as root, the master switches to ``uname``/``gname`` (docs/service.md, "The
service user"): everything runs as that user, with its HOME, USER, LOGNAME and
supplementary groups; and ``stop``'s exit status when processes remain."""

from __future__ import annotations

import grp
import io
import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from harness import FIXTURES, REPO, wait_for
from servicekit import Service, checked, events, python_for

from pandaserver.service import lifecycle as control
from pandaserver.service.pidfile import lock_holder


@pytest.fixture
def nobody_svc() -> Iterator[Service]:
    if os.geteuid() != 0:
        pytest.skip("the switch to another user needs root")
    user, group = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    path = [str(FIXTURES), str(REPO), sysconfig.get_paths()["purelib"]]
    python = python_for(user.pw_uid, group.gr_gid, path)
    root = Path(tempfile.mkdtemp(prefix="panda-service-"))  # not under pytest's 0700 tmp
    try:
        root.chmod(0o755)
        service = Service(root, python=python, no_root=False, pythonpath=path[2:])
        service.write({"quick": {"module": "record", "period": 2}}, uname="nobody",
                      gname="nogroup")
        service.config.chmod(0o644)
        yield from checked(service)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_started_as_root_everything_runs_as_uname_gname(nobody_svc: Service) -> None:
    svc = nobody_svc
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    svc.record.touch()
    os.chown(svc.record, uid, gid)
    pid = svc.start()
    for proc in [psutil.Process(pid), *svc.workers(pid, 2)]:
        assert tuple(proc.uids()) == (uid, uid, uid), proc
        assert tuple(proc.gids()) == (gid, gid, gid), proc
    run = wait_for(lambda: events(svc, "start", "quick"), 15, "a script run")[0]
    assert psutil.Process(run["pid"]).uids().real == uid
    for path in (svc.logdir, svc.pidfile.parent, svc.logdir / "panda_daemon_stdout.log",
                 svc.logdir / "panda-daemons.log", svc.pidfile, svc.root / "state"):
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    svc.write({"quick": {"module": "record", "period": 2},  # re-read as nobody
               "added": {"module": "record", "period": 2}}, uname="nobody", gname="nogroup")
    assert svc.cli("reload").returncode == 0
    svc.wait_log("reload: script added added")
    # the workers' cgroups were made as root before the switch, and handed to the user
    subtree = Path(svc.log().split("containment: a cgroup per worker under ")[1].split()[0])
    assert Path(f"/proc/{pid}/cgroup").read_text().strip().endswith(f"/{subtree.name}/master")
    workers = [path for path in subtree.iterdir() if path.name.startswith("worker-")]
    assert len(workers) >= 2
    for path in [subtree, *workers]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    # a worker whose master died kills the whole subtree in one write (watchdog.py)
    kill = subtree / "cgroup.kill"
    assert not kill.exists() or (kill.stat().st_uid, kill.stat().st_gid) == (uid, gid)
    assert any(str(run["pid"]) in (path / "cgroup.procs").read_text().split()
               for path in workers), "the run's worker is not in a worker's cgroup"
    svc.stop()
    assert not subtree.exists(), "stop did not remove the master's cgroups"


def test_started_as_root_directories_the_user_cannot_write_fail_start(
        nobody_svc: Service) -> None:
    svc = nobody_svc
    state = svc.root / "state"
    state.mkdir(mode=0o755)  # exists, owned by root: the master, as nobody, cannot write
    result = svc.cli("start")
    assert result.returncode == 1
    assert f"user nobody cannot write the SQLite database in {state}" in result.stderr
    assert not svc.pidfile.exists() and svc.processes() == []

    os.chown(state, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    shutil.rmtree(svc.logdir)  # the first start created it, and the files, for nobody
    svc.logdir.mkdir(mode=0o755)
    result = svc.cli("start")
    assert result.returncode == 1
    assert "cannot open a log file as user nobody: Permission denied" in result.stderr
    assert not svc.pidfile.exists() and svc.processes() == []


@pytest.fixture
def extra_group() -> Iterator[grp.struct_group]:
    """A group with nobody as a member, for the test's length: so the supplementary groups
    nobody gets at the switch are not merely its primary group."""
    if os.geteuid() != 0:
        pytest.skip("adding a group needs root")
    name = f"pdt{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--users", "nobody", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def test_started_as_root_the_switch_sets_home_user_logname_and_groups(
        nobody_svc: Service, extra_group: grp.struct_group) -> None:
    svc = nobody_svc
    user, group = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    svc.write({"who": {"module": "whoami", "period": 60}}, uname="nobody", gname="nogroup")
    svc.record.touch()
    os.chown(svc.record, user.pw_uid, group.gr_gid)
    assert svc.env["HOME"] != user.pw_dir and svc.env.get("USER") != "nobody"  # root's
    svc.start()
    seen = wait_for(lambda: events(svc, "start", "who"), 15, "the script to run")[0]
    assert seen["env"] == {"HOME": user.pw_dir, "USER": "nobody", "LOGNAME": "nobody"}
    assert (seen["uid"], seen["euid"], seen["gid"], seen["egid"]) == (
        user.pw_uid, user.pw_uid, group.gr_gid, group.gr_gid)
    expected = sorted(os.getgrouplist("nobody", group.gr_gid))
    assert seen["groups"] == expected, "supplementary groups are not the user's"
    assert extra_group.gr_gid in seen["groups"] and 0 not in seen["groups"]
    svc.stop()


def test_stop_exits_1_and_keeps_the_pid_file_while_processes_remain(
        svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that SIGKILL cannot end at once (stuck in the kernel, say) is simulated by
    # a stop whose kills do nothing: it must not claim success nor drop the pid file.
    svc.config = svc.write({"stubborn": {"module": "hang", "arguments": ["stubborn"],
                                         "period": 60, "timeout": 300}}, stop_grace=60)
    pid = svc.start()
    child = wait_for(lambda: events(svc, "start", "stubborn"), 15, "the stubborn script")[0]
    monkeypatch.setattr(control, "_kill", lambda family, group: None)
    monkeypatch.setattr(control, "KILL_WAIT", 1.0)
    out, err = io.StringIO(), io.StringIO()
    assert control.stop(svc.pidfile, 0.5, out, err) == 1
    assert "did not stop within 0.5 s" in out.getvalue()
    left = err.getvalue()
    assert "processes still running after SIGKILL: " in left and "is kept" in left
    for still in (pid, child["pid"], child["child"]):
        assert str(still) in left
    assert lock_holder(svc.pidfile) == pid and svc.pidfile.exists()
    monkeypatch.undo()
    svc.stop()  # a stop that can kill ends them all, and exits 0


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    yield from checked(Service(tmp_path))

"""A SIGHUP's re-read of the configuration (``Rereader``, pandaserver/daemons/master/wakeups.py):
one at a time, on its own thread; a SIGHUP meanwhile is served once, after it. A real thread
held by an event; no process, no signal."""

from __future__ import annotations

import threading

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.master.wakeups import Rereader


def test_one_reread_at_a_time_and_a_sighup_meanwhile_served_once_after_it() -> None:
    release, woken = threading.Event(), threading.Event()
    reads: list[int] = []

    def read() -> DaemonSettings:  # stands for the re-read: its error is the result handed back
        reads.append(len(reads) + 1)
        assert release.wait(10)
        raise ValueError(f"read {len(reads)}")

    rereader = Rereader(read, woken.set)
    rereader.start()
    rereader.start()  # two SIGHUPs while the first re-read runs: one more re-read, after it
    rereader.start()
    assert rereader.take() is None  # nothing back while the thread reads
    release.set()
    assert woken.wait(10), "the re-read's result did not wake the loop"
    first = rereader.take()
    assert isinstance(first, ValueError) and str(first) == "read 1"
    assert rereader.again() and not rereader.again()  # served once, then forgotten
    woken.clear()
    rereader.start()  # what the loop does when ``again`` says so
    assert woken.wait(10), "the second re-read's result did not wake the loop"
    second = rereader.take()
    assert isinstance(second, ValueError) and str(second) == "read 2"
    assert reads == [1, 2] and not rereader.again()

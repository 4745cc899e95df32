"""A SIGHUP's re-read of the configuration (``Rereader``, pandaserver/daemons/master/wakeups.py):
one at a time, on its own thread; a SIGHUP meanwhile is served once, after it. A real thread
held by an event; no process, no signal."""

from __future__ import annotations

import os
import signal
import threading

from pandaserver.config.daemon import DaemonSettings
from pandaserver.daemons.master.wakeups import Rereader, SignalPipe


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


def test_once_the_loop_is_over_its_signals_are_ignored_not_given_back_their_default() -> None:
    # the interpreter's exit gives a signal with a Python handler its default action back:
    # a stop signal arriving then ended a master that had already stopped, exit -15
    pipe = SignalPipe()
    before = {signum: signal.getsignal(signum)
              for signum in (signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD)}
    try:
        pipe.install(before)
        assert signal.getsignal(signal.SIGUSR2) == pipe.record
        pipe.ignore()
        assert {signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGHUP)} \
            == {signal.SIG_IGN}
        # not SIG_IGN: that would have the kernel reap children, their statuses lost
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGUSR2)  # default action: the end of this process
        assert pipe.pending == []
    finally:
        signal.set_wakeup_fd(-1)
        for signum, handler in before.items():
            signal.signal(signum, handler)
        for fd in (pipe.read_fd, pipe.write_fd):
            os.close(fd)

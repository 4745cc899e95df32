"""Log handlers that drop and count what cannot be written, never raise, never recurse."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pandaserver.daemons.base.logsink import DropCounter, SafeHandler, WorkerDrops
from pandaserver.daemons.worker.capture import LineLogger


@pytest.fixture
def full_fd() -> Iterator[int]:
    """A descriptor every write to which fails with ENOSPC, as on a full disk."""
    fd = os.open("/dev/full", os.O_WRONLY)
    yield fd
    os.close(fd)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.Logger("test.logsink")  # outside the hierarchy: no pytest handlers
    yield log
    for handler in log.handlers:
        handler.close()


def test_a_full_disk_drops_and_counts_lines_without_a_word_on_stderr(
        full_fd: int, logger: logging.Logger, capfd: pytest.CaptureFixture[str]) -> None:
    episodes: list[str] = []
    handler = SafeHandler(fd=full_fd, counter=DropCounter(on_episode=episodes.append))
    logger.addHandler(handler)
    for i in range(1000):
        logger.warning("line %d", i)
    assert handler.counter.dropped == 1000
    assert handler.counter.failing and "No space left on device" in (handler.counter.error or "")
    assert len(episodes) == 1, "one notice per episode"
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_writing_again_ends_the_episode_with_a_line_saying_how_many_were_dropped(
        full_fd: int, logger: logging.Logger, tmp_path: Path) -> None:
    episodes: list[str] = []
    handler = SafeHandler(fd=full_fd, counter=DropCounter(on_episode=episodes.append))
    logger.addHandler(handler)
    logger.warning("lost 1")
    logger.warning("lost 2")
    good = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    handler.fd = good  # the disk has room again
    logger.warning("back")
    handler.fd = full_fd
    logger.warning("lost 3")  # a second episode
    os.close(good)
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[0] == "back"
    assert "2 log line(s) were dropped" in lines[1] and "No space left" in lines[1]
    assert len(episodes) == 2 and handler.counter.dropped == 3
    assert handler.counter.report() == (3, handler.counter.error)
    assert handler.counter.report()[0] == 0, "a report counts since the previous one"


def test_a_file_moved_away_is_reopened_and_one_that_cannot_be_opened_is_retried(
        logger: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "w.log"
    handler = SafeHandler(path=str(path))
    logger.addHandler(handler)
    logger.warning("no directory yet")
    assert handler.counter.dropped == 1
    path.parent.mkdir()
    logger.warning("one")
    path.rename(tmp_path / "logs" / "w.log.1")  # logrotate
    logger.warning("two")
    one, notice = (tmp_path / "logs" / "w.log.1").read_text().splitlines()
    assert one == "one" and "1 log line(s) were dropped" in notice
    assert path.read_text().splitlines()[0] == "two"
    handler.close()


def test_a_record_logged_while_writing_is_dropped_not_recursed(
        logger: logging.Logger, tmp_path: Path) -> None:
    class Chatty(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            logger.warning("from inside the handler")  # re-enters the same handler
            return super().format(record)

    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    handler = SafeHandler(fd=fd)
    handler.setFormatter(Chatty())
    logger.addHandler(handler)
    logger.warning("outer")
    os.close(fd)
    assert (tmp_path / "log").read_text().splitlines()[0] == "outer"
    # the inner record, and the inner record of the "dropped" notice written after it
    assert handler.counter.dropped == 2


def test_print_to_captured_stdout_on_a_full_disk_never_raises(
        full_fd: int, tmp_path: Path) -> None:
    """The worker's set-up: stdout is a LineLogger, its records go to a full disk; a
    script's own handler writing to stderr (another LineLogger) would loop back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = SafeHandler(fd=full_fd)
    stdout = LineLogger("stdout", logging.INFO)
    stderr = LineLogger("stderr", logging.WARNING)
    root.handlers[:] = [handler, logging.StreamHandler(stderr)]  # the script's handler
    root.setLevel(logging.INFO)
    try:
        for _ in range(300):
            print("x" * 1000, file=stdout)  # 300 KB
        stdout.flush()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert handler.counter.dropped >= 300


def test_a_bad_format_argument_is_written_as_such(logger: logging.Logger,
                                                  tmp_path: Path) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    logger.addHandler(SafeHandler(fd=fd))
    logger.warning("%d apples", "three")
    os.close(fd)
    assert "unformattable log record" in (tmp_path / "log").read_text()


def test_worker_reports_make_one_episode_across_workers() -> None:
    episodes: list[str] = []
    drops = WorkerDrops(on_episode=episodes.append)
    assert drops.update(1, {"op": "ready", "log_dropped": 0, "log_error": None}) is None
    assert drops.update(1, {"op": "done", "log_dropped": 40, "log_error": "w.log: full"}) is None
    assert drops.update(2, {"op": "done", "log_dropped": 2, "log_error": "w.log: full"}) is None
    assert drops.update(1, {"op": "done", "log_dropped": 0, "log_error": None}) is None
    assert drops.update(2, {"op": "done", "log_dropped": 1, "log_error": None}) == (43, "")
    assert episodes == ["w.log: full"] and drops.dropped == 43 and drops.error is None
    drops.update(3, {"op": "done"})  # an older worker's message: nothing to count
    assert drops.dropped == 43


def test_a_standard_stream_replaced_in_process_is_written_through(
        logger: logging.Logger, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler = SafeHandler(stream="stderr")
    logger.addHandler(handler)
    logger.warning("to the captured stderr")  # capsys replaced sys.stderr
    assert capsys.readouterr().err == "to the captured stderr\n"

    class Full:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            pass

    monkeypatch.setattr("sys.stderr", Full())
    logger.warning("lost")
    assert handler.counter.dropped == 1 and "No space left" in (handler.counter.error or "")

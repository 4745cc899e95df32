"""PanDA's process-lock calls on the TaskBuffer, on SQLite and PostgreSQL.

The expected behaviour is PanDA's (OraDBProxy lockProcess_PANDA, unlockProcess_PANDA,
checkProcessLock_PANDA), with time limits in minutes on the database clock.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, select, text, update

from pandaserver.config import PandaConfig
from pandaserver.db.base.servertime import db_now_plus
from pandaserver.db.base.tables import panda_process_lock
from pandaserver.taskbuffer import RunContext, TaskBuffer


@pytest.fixture
def tbuf(db_engine: Engine) -> TaskBuffer:
    return TaskBuffer(db_engine, RunContext("add_main", run_id=12, generation=3))


def age_lock(engine: Engine, component: str, minutes: float) -> None:
    """Pretend the lock was taken ``minutes`` ago (by the database clock)."""
    with engine.begin() as conn:
        conn.execute(update(panda_process_lock)
                     .where(panda_process_lock.c.component == component)
                     .values(locked_time=db_now_plus(-60 * minutes)))


def holder(engine: Engine, component: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(panda_process_lock.c.locked_by)
                            .where(panda_process_lock.c.component == component)).scalar()


def test_lock_is_exclusive_until_time_limit(tbuf: TaskBuffer, db_engine: Engine) -> None:
    assert tbuf.lockProcess_PANDA("add_main", "host1-100", time_limit=5)
    assert not tbuf.lockProcess_PANDA("add_main", "host2-200", time_limit=5)
    # as in PanDA, a fresh lock refuses its own holder too
    assert not tbuf.lockProcess_PANDA("add_main", "host1-100", time_limit=5)
    assert holder(db_engine, "add_main") == "host1-100"
    age_lock(db_engine, "add_main", 6)
    assert tbuf.lockProcess_PANDA("add_main", "host2-200", time_limit=5)
    assert holder(db_engine, "add_main") == "host2-200"


def test_force_takes_a_fresh_lock(tbuf: TaskBuffer, db_engine: Engine) -> None:
    assert tbuf.lockProcess_PANDA("copyArchive", "a", time_limit=60)
    assert tbuf.lockProcess_PANDA("copyArchive", "b", time_limit=60, force=True)
    assert holder(db_engine, "copyArchive") == "b"


def test_unlock_only_by_the_holder_and_true_as_in_panda(tbuf: TaskBuffer,
                                                        db_engine: Engine) -> None:
    assert tbuf.lockProcess_PANDA("comp", "a", time_limit=5)
    assert tbuf.unlockProcess_PANDA("comp", "b")  # nothing removed, still True
    assert holder(db_engine, "comp") == "a"
    assert tbuf.unlockProcess_PANDA("comp", "a")
    assert holder(db_engine, "comp") is None
    assert tbuf.lockProcess_PANDA("comp", "b", time_limit=5)


def test_check_process_lock(tbuf: TaskBuffer, db_engine: Engine) -> None:
    assert tbuf.checkProcessLock_PANDA("comp", "me", time_limit=5) == (False, None)
    assert tbuf.lockProcess_PANDA("comp", "host1-100-worker", time_limit=5)
    locked, when = tbuf.checkProcessLock_PANDA("comp", "host2", time_limit=5)
    assert locked and when is not None and when.utcoffset() is not None
    assert tbuf.checkProcessLock_PANDA("comp", "host1-100-worker", 5) == (False, None)
    # check_base: a lock whose name starts with pid is ours
    assert tbuf.checkProcessLock_PANDA("comp", "host1-100", 5, check_base=True) == (False, None)
    assert tbuf.checkProcessLock_PANDA("comp", "host1-100", 5)[0]
    age_lock(db_engine, "comp", 10)
    assert tbuf.checkProcessLock_PANDA("comp", "host2", time_limit=5) == (False, None)
    assert tbuf.checkProcessLock_PANDA("comp", "host2", time_limit=15)[0]


def test_integer_pids_work_like_strings(tbuf: TaskBuffer) -> None:
    assert tbuf.lockProcess_PANDA("comp", 4242, time_limit=5)
    assert tbuf.checkProcessLock_PANDA("comp", 4242, 5) == (False, None)
    assert tbuf.checkProcessLock_PANDA("comp", "4242", 5) == (False, None)
    assert tbuf.unlockProcess_PANDA("comp", 4242)


def test_threads_racing_for_a_lock_get_exactly_one(db_engine: Engine) -> None:
    contenders = 10
    barrier = threading.Barrier(contenders)
    results: list[bool] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        tb = TaskBuffer(db_engine)
        barrier.wait(timeout=30)
        got = tb.lockProcess_PANDA("race", f"p{i}", time_limit=5)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * (contenders - 1) + [True]


def test_database_errors_return_panda_defaults_and_hide_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pandaserver.db.base.engine import engine_from_url

    down = engine_from_url("postgresql+psycopg2://panda:Sup3rS3cret@127.0.0.1:1/panda")
    tb = TaskBuffer(down, RunContext("add_main", run_id=99))
    try:
        with caplog.at_level(logging.ERROR, logger="pandaserver.taskbuffer.taskbuffer"):
            assert tb.lockProcess_PANDA("comp", "me", 5) is False
            assert tb.unlockProcess_PANDA("comp", "me") is False
            assert tb.checkProcessLock_PANDA("comp", "me", 5) == (False, None)
    finally:
        down.dispose()
    assert len(caplog.records) == 3
    assert "Sup3rS3cret" not in caplog.text
    assert "script=add_main run=99 lockProcess_PANDA" in caplog.text
    assert "panda:***@127.0.0.1:1" in caplog.text


# --- engines and fork --------------------------------------------------------------------

@pytest.fixture
def lazy_tbuf(db_engine: Engine, config_for: Callable[..., PandaConfig]) -> Iterator[TaskBuffer]:
    tb = TaskBuffer.from_config(config_for(db_engine.url, n_dbconn=2))
    yield tb
    tb.dispose()


def test_from_config_creates_its_engine_on_first_use(lazy_tbuf: TaskBuffer) -> None:
    assert lazy_tbuf._engine is None  # nothing built before it is used
    assert lazy_tbuf.lockProcess_PANDA("comp", "a", 5)
    first = lazy_tbuf.engine
    assert lazy_tbuf.engine is first
    lazy_tbuf.dispose()
    assert lazy_tbuf._engine is None
    assert not lazy_tbuf.lockProcess_PANDA("comp", "b", 5)  # a new engine, same database


def _child_uses(tb: TaskBuffer, queue: multiprocessing.Queue[object]) -> None:
    try:
        with tb.engine.connect() as conn:
            queue.put((os.getpid(), conn.execute(text("SELECT 41 + 1")).scalar(),
                       tb._engine_pid, tb.lockProcess_PANDA("forked", f"child-{os.getpid()}", 5)))
    except Exception as exc:  # reported to the parent
        queue.put(repr(exc))


def test_after_fork_the_child_builds_its_own_engine(lazy_tbuf: TaskBuffer) -> None:
    parent_engine = lazy_tbuf.engine  # used (and pooled) in the parent before the fork
    assert lazy_tbuf.checkProcessLock_PANDA("forked", "x", 5) == (False, None)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = ctx.Queue()
    child = ctx.Process(target=_child_uses, args=(lazy_tbuf, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0, got
    assert isinstance(got, tuple)
    pid, answer, engine_pid, locked = got
    assert answer == 42 and engine_pid == pid != os.getpid() and locked is True
    # the parent's engine and its pooled connection still work
    assert lazy_tbuf.engine is parent_engine
    assert lazy_tbuf.checkProcessLock_PANDA("forked", "x", 5)[0]


def test_a_given_engine_is_refused_in_another_process(db_engine: Engine) -> None:
    tb = TaskBuffer(db_engine)
    tb._engine_pid = os.getpid() + 1  # as if it had been created before a fork
    with pytest.raises(RuntimeError, match=r"TaskBuffer\.from_config"):
        _ = tb.engine


"""Calling main() like the original daemon; loop mode; lock pool; worker states."""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest

from pandaserver.daemons.base.states import TransitionError, WorkerState, check_transition
from pandaserver.daemons.worker.invoke import run_main
from pandaserver.daemons.worker.lock_pool import LockPool


def module_with(main: Any) -> types.ModuleType:
    mod = types.ModuleType("fake")
    mod.main = main  # type: ignore[attr-defined]
    return mod


KWARGS = {"argv": ("s",), "tbuf": object(), "lock_pool": LockPool()}


def test_only_accepted_keywords_are_passed() -> None:
    seen: dict[str, Any] = {}

    def legacy(argv: Any = None, tbuf: Any = None) -> None:
        seen.update(argv=argv, tbuf=tbuf)

    assert run_main(module_with(legacy), KWARGS, loop=False, period=1).outcome == "ok"
    assert seen["argv"] == ("s",)

    def bare() -> None:
        seen["bare"] = True

    assert run_main(module_with(bare), KWARGS, loop=False, period=1).outcome == "ok"
    assert seen["bare"]


def test_loop_stops_on_false_value() -> None:
    answers = iter([True, 1, "yes", 0])
    result = run_main(module_with(lambda **_: next(answers)), KWARGS, loop=True, period=60)
    assert result.outcome == "ok" and result.calls == 4


def test_loop_stops_when_period_has_passed() -> None:
    now = [0.0]

    def main(**_: Any) -> bool:
        now[0] += 4.0
        return True

    result = run_main(module_with(main), KWARGS, loop=True, period=10,
                      monotonic=lambda: now[0])
    assert result.calls == 3  # 4, 8, 12 >= 10


def test_exception_fails_and_sys_exit_is_lost() -> None:
    def boom(**_: Any) -> None:
        raise ValueError("nope")

    failed = run_main(module_with(boom), KWARGS, loop=False, period=1)
    assert failed.outcome == "failed" and failed.error == "ValueError: nope"

    def leave(**_: Any) -> None:
        raise SystemExit(5)

    lost = run_main(module_with(leave), KWARGS, loop=False, period=1)
    assert lost.outcome == "lost" and "sys.exit(5)" in (lost.error or "")


def test_lock_pool_names_share_one_lock() -> None:
    pool = LockPool()
    assert pool.get("a") is pool["a"] and pool.get("a") is not pool.get("b")
    assert pool.acquire("a")
    got = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire("a", timeout=0.05)))
    thread.start()
    thread.join()
    assert got == [False]
    pool.release("a")
    with pool.lock("a"):
        assert pool.names() == ["a", "b"]


def test_worker_state_transitions() -> None:
    assert check_transition(WorkerState.IDLE, WorkerState.BUSY) is WorkerState.BUSY
    with pytest.raises(TransitionError, match="from killing to idle"):
        check_transition(WorkerState.KILLING, WorkerState.IDLE)
    with pytest.raises(TransitionError):
        check_transition(WorkerState.RETIRING, WorkerState.IDLE)

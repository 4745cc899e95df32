"""Crash-loop back-off and the spawn bound: pure decisions on plain numbers."""

from __future__ import annotations

from pandaserver.daemons.master.crashloop import (
    FLAG_AFTER,
    CrashLoops,
    SpawnLimiter,
    backoff_delay,
    spawn_limit,
)


def test_backoff_doubles_is_capped_and_jittered_within_half_to_full() -> None:
    assert [backoff_delay(n, 300.0, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(1, 300.0, 0.0) == 0.5
    assert backoff_delay(50, 300.0, 0.999999) <= 300.0
    assert backoff_delay(10_000, 300.0, 0.0) == 150.0  # no overflow, never past the cap


def test_flagged_after_consecutive_crashes_until_a_clean_run() -> None:
    loops = CrashLoops(cap=60.0, rng=lambda: 0.0)
    for n in range(1, FLAG_AFTER):
        record = loops.crashed("segv", 100.0, "the worker killed by SIGSEGV")
        assert not record.looping and record.failures == n
    assert loops.looping() == {}
    record = loops.crashed("segv", 100.0, "the worker killed by SIGSEGV")
    assert loops.looping() == {"segv": "the worker killed by SIGSEGV"}
    assert loops.blocked("segv", record.until - 0.001) and not loops.blocked("segv", record.until)
    assert loops.next_event(100.0) == record.until
    assert loops.clean("segv") is not None
    assert loops.looping() == {} and not loops.blocked("segv", 100.0)


def test_spawns_bounded_in_any_window_whatever_the_demand() -> None:
    limiter = SpawnLimiter(window=60.0)
    limit = spawn_limit(1)
    now = 0.0
    started = []
    while now < 600.0:  # a worker wanted every 10 ms for ten minutes
        if limiter.allowed(now, limit):
            limiter.note(now)
            started.append(now)
        now += 0.01
    for i in range(len(started) - limit):
        assert started[i + limit] - started[i] >= 60.0 - 1e-9
    assert limiter.next_allowed(started[-1], limit) > started[-1]

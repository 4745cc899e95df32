"""The chaos benchmark's generation check across failovers (benchmarks/chaosdb.py): a
generation may come again after a promotion (its grant never reached the standby), never
between two; and the time to the first sync run after each promotion."""

from __future__ import annotations

from typing import Any

from benchmarks.chaosdb import Database, generations_by_era, sync_after_promotions


class _Db(Database):
    def __init__(self, promotions: list[tuple[float, float]]) -> None:  # no server needed
        self.promotions = promotions


def runs(*pairs: tuple[float, int]) -> list[dict[str, Any]]:
    return [{"t": t, "generation": g} for t, g in pairs]


def test_a_generation_granted_again_after_a_promotion_is_in_a_new_era() -> None:
    db = _Db([(10.0, 12.0)])
    found = runs((1.0, 1), (5.0, 2), (9.0, 3), (30.0, 3), (33.0, 4))
    assert generations_by_era(db, found) == [[1, 2, 3], [3, 4]]


def test_a_generation_granted_again_without_a_promotion_stays_out_of_step() -> None:
    found = runs((1.0, 1), (5.0, 2), (30.0, 2))
    assert generations_by_era(_Db([]), found) == [[1, 2, 2]]
    assert generations_by_era(_Db([(40.0, 42.0)]), found) == [[1, 2, 2], []]


def test_the_first_sync_run_after_each_promotion_is_measured_from_crash_and_promotion() -> None:
    db = _Db([(10.0, 12.0), (50.0, 52.5)])
    found = runs((9.0, 3), (29.5, 3), (31.0, 4), (70.0, 5))
    assert sync_after_promotions(db, found) == [
        {"since_crash_s": 19.5, "since_promotion_s": 17.5},
        {"since_crash_s": 20.0, "since_promotion_s": 17.5}]
    assert sync_after_promotions(_Db([(80.0, 82.0)]), found) == [
        {"since_crash_s": None, "since_promotion_s": None}]

"""The firing notes a master writes at each cron hand-over, and how a start merges them with
the status file (``pandaserver/daemons/master/firingnotes.py``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from fakemaster import spec

from pandaserver.config.cronspec import parse
from pandaserver.daemons.master.firingnotes import FiringNotes, merge, notes_path, read_notes


def test_the_notes_sit_beside_the_status_file_under_the_servers_name() -> None:
    assert notes_path(Path("/s/status-db1.json")) == Path("/s/firings-db1.json")


def test_a_later_firing_of_the_same_schedule_moves_the_status_files_forward() -> None:
    status = {"c": ("* * * * *", "UTC", 60.0), "d": ("0 * * * *", "UTC", 3600.0)}
    notes = {"c": ("* * * * *", "UTC", 120.0), "d": ("0 * * * *", "UTC", 0.0),
             "e": ("*/5 * * * *", "UTC", 300.0)}
    assert merge(status, notes) == {"c": ("* * * * *", "UTC", 120.0),  # the newer truth
                                    "d": ("0 * * * *", "UTC", 3600.0),  # not moved back
                                    "e": ("*/5 * * * *", "UTC", 300.0)}  # only noted


def test_where_the_two_name_different_schedules_the_status_file_wins() -> None:
    # a reload changed the schedule; the status file follows it within a second
    assert merge({"c": ("0 * * * *", "UTC", 3600.0)}, {"c": ("* * * * *", "UTC", 9e9)}) \
        == {"c": ("0 * * * *", "UTC", 3600.0)}


def test_notes_written_are_read_back_and_a_broken_file_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "firings-here.json"
    notes = FiringNotes(path)
    cron = dataclasses.replace(spec("c"), cron=parse("*/5 * * * *", "Europe/Zurich"))
    notes.waiting(cron, 300.0)
    notes.waiting(spec("p"), 1.0)  # not a cron script: nothing to note
    assert read_notes(path) == {"c": ("*/5 * * * *", "Europe/Zurich", 300.0)}
    path.write_text("{not json")
    assert read_notes(path) == {}
    assert read_notes(tmp_path / "missing.json") == {}


def test_a_note_that_cannot_be_written_is_said_once_and_the_loop_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notes = FiringNotes(tmp_path / "no-such-dir" / "firings-here.json")
    cron = dataclasses.replace(spec("c"), cron=parse("* * * * *"))
    with caplog.at_level(logging.WARNING):
        notes.waiting(cron, 60.0)
        notes.waiting(cron, 120.0)
    said = [r.getMessage() for r in caplog.records if "firings-here.json" in r.getMessage()]
    assert len(said) == 1 and "may run again" in said[0], said

"""``watchdog.gone``: a closed lifeline shows its master gone without a byte being read, so
the worker's main thread can check it while the lifeline thread keeps reading deadlines."""

from __future__ import annotations

import os

from pandaserver.daemons.base.lifeline import encode_deadline
from pandaserver.daemons.worker.watchdog import gone


def test_an_open_lifeline_is_not_gone_even_with_a_deadline_unread() -> None:
    read, write = os.pipe()
    try:
        assert not gone(read)
        os.write(write, encode_deadline(12.5))
        assert not gone(read, timeout=0.05)
        assert os.read(read, 64) == encode_deadline(12.5)  # nothing was consumed
    finally:
        os.close(read)
        os.close(write)


def test_a_closed_lifeline_is_gone_whatever_is_left_unread() -> None:
    read, write = os.pipe()
    try:
        os.write(write, encode_deadline(3.0))
        os.close(write)
        assert gone(read)
        assert os.read(read, 64) == encode_deadline(3.0)
    finally:
        os.close(read)


def test_a_lifeline_descriptor_closed_by_a_script_is_not_taken_for_the_master_gone() -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        assert not gone(read, timeout=0.05)
    finally:
        os.close(write)

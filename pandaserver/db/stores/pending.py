"""``PendingWrites``: history writes that failed while the database was unreachable.

Bounded: when full, the oldest entry is dropped and counted; ``flush`` reports the count
once. Each entry remembers when (monotonic clock) it was queued, and a replay moves its
times back by the time it waited (``aged``), so rows keep their real times on the
database's clock. Not thread-safe: one owner.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from pandaserver.db.stores.history import HistoryStore
    from pandaserver.db.stores.runrecords import PendingItem


@dataclass(frozen=True)
class FlushResult:
    """``written``: replayed now; ``remaining``: still queued; ``dropped``: entries lost
    to the bound since the last report; ``error``: the exception that stopped the
    replay (None when everything was written)."""

    written: int
    remaining: int
    dropped: int
    error: SQLAlchemyError | None = None


class PendingWrites:
    def __init__(self, max_items: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got: {max_items}")
        self.max_items = max_items
        self._clock = clock
        self._items: deque[tuple[float, PendingItem]] = deque()
        self._dropped_unreported = 0
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, item: PendingItem, queued_at: float | None = None) -> None:
        """Queue a write (made at ``queued_at``, monotonic; default now); when full, the
        oldest entry is dropped and counted."""
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self._dropped_unreported += 1
            self.dropped_total += 1
        self._items.append((self._clock() if queued_at is None else queued_at, item))

    def take(self, count: int | None = None) -> list[tuple[float, PendingItem]]:
        """Remove and return the oldest ``count`` entries (all by default), with the
        monotonic time each was made."""
        count = len(self._items) if count is None else min(count, len(self._items))
        return [self._items.popleft() for _ in range(count)]

    def items(self) -> list[PendingItem]:
        """The queued writes, oldest first (for moving them to another queue)."""
        return [item for _, item in self._items]

    def take_dropped(self) -> int:
        """How many entries were dropped since the last report (and reset that count)."""
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        return dropped

    def flush(self, history: HistoryStore, chunk: int = 500) -> FlushResult:
        """Replay queued writes oldest first, ``chunk`` at a time in one transaction each,
        each moved back by the time it waited; stop at the first database error."""
        written = 0
        error: SQLAlchemyError | None = None
        while self._items:
            now = self._clock()
            batch = [item.aged(now - queued_at)
                     for queued_at, item in itertools.islice(self._items, chunk)]
            try:
                history.write_many(batch)
            except SQLAlchemyError as exc:
                error = exc
                break
            for _ in batch:
                self._items.popleft()
            written += len(batch)
        return FlushResult(written, len(self._items), self.take_dropped(), error)

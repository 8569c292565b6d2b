"""A timer heap for the broker's loop: (due time, sequence, key). Cancelled or superseded timers
are dropped lazily by the owner when they come due. Pure: the caller passes the time."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from typing import Any


class TimerHeap:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._sequence = itertools.count()

    def schedule(self, due: float, key: Any) -> None:
        heapq.heappush(self._heap, (due, next(self._sequence), key))

    def rebuild(self, entries: Iterable[tuple[float, Any]]) -> None:
        """Replace every timer with `entries` (due, key): drops the dead ones lazy deletion left."""
        self._heap = [(due, next(self._sequence), key) for due, key in entries]
        heapq.heapify(self._heap)

    def pop_due(self, now: float) -> list[Any]:
        due: list[Any] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def seconds_until_next(self, now: float, ceiling: float) -> float:
        if not self._heap:
            return ceiling
        return min(ceiling, max(0.0, self._heap[0][0] - now))

    def __len__(self) -> int:
        return len(self._heap)

"""The broker's event hook: what happened to requests and workers, for token-velocity estimation,
SLO accounting and the autoscaler (issue 7). Events are typed Structs; a bounded log keeps the
latest ones until someone drains them, and subscribers get each one as it happens.

Events hold only scalars and strings, so they are kept out of the garbage collector's sight
(gc=False): a long log of them costs the broker's loop no collection pauses.
Pure data and a container: no I/O, no clock (the broker stamps the times)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec


class Arrival(msgspec.Struct, tag=True, frozen=True, gc=False):
    time: float
    request_id: str
    input_tokens: int
    max_tokens: int


class FirstToken(msgspec.Struct, tag=True, frozen=True, gc=False):
    time: float
    request_id: str
    ttft_s: float


class Finished(msgspec.Struct, tag=True, frozen=True, gc=False):
    time: float
    request_id: str
    input_tokens: int
    output_tokens: int
    outcome: str
    """"ok", or the error code the client got."""
    path: str
    ttft_s: float | None = None
    tpot_s: float | None = None
    retries: int = 0


class WorkerChange(msgspec.Struct, tag=True, frozen=True, gc=False):
    time: float
    worker_id: str
    role: str
    partition: str
    change: str
    """"ready", "draining", "left" (DISCONNECT), "lost" (silent or fatal)."""
    job_id: str | None = None
    reason: str = ""


Event = Arrival | FirstToken | Finished | WorkerChange
EVENT_TYPES: tuple[type[Event], ...] = (Arrival, FirstToken, Finished, WorkerChange)


class EventHub:
    """A bounded event log plus subscribers. The autoscaler calls `drain()` once per tick."""

    def __init__(self, max_events: int = 200_000):
        self._log: deque[Event] = deque(maxlen=max_events)
        self._subscribers: dict[type, list[Callable[[Any], None]]] = {t: [] for t in EVENT_TYPES}

    def subscribe(self, callback: Callable[[Any], None], *kinds: type[Event]) -> None:
        """`callback` runs on the broker's loop for every event of `kinds` (default: all); it
        must be quick."""
        for kind in kinds or EVENT_TYPES:
            self._subscribers[kind].append(callback)

    def emit(self, event: Event) -> None:
        self._log.append(event)
        for callback in self._subscribers[type(event)]:
            callback(event)

    def drain(self) -> list[Event]:
        events = list(self._log)
        self._log.clear()
        return events

    def __len__(self) -> int:
        return len(self._log)

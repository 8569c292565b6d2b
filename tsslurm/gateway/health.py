"""`/health`: is the broker reachable and can its workers serve? The client protocol has no status
query, so readiness is shown the way a user would see it: a request was served. A request the
gateway served in the last `fresh_s` (and no request failed since for want of the broker or a
worker) proves it at no cost; otherwise a probe (one prompt token,
one output token, greedy) goes through the broker with a short deadline. The broker answering
with `timeout` means it is reachable but no worker served the probe; no answer at all means the
broker is unreachable. One probe at a time, its result shared by concurrent callers and reused
for `reuse_s`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple


class Health(NamedTuple):
    ok: bool
    broker: str
    """"reachable" | "unreachable"."""
    workers: str
    detail: str

    def body(self) -> dict[str, str]:
        return {"status": "ok" if self.ok else "unavailable", "broker": self.broker,
                "workers": self.workers, "detail": self.detail}


class ProbeFailed(Exception):
    """The probe failed; `broker_reached` says whether the broker answered."""

    def __init__(self, message: str, broker_reached: bool):
        super().__init__(message)
        self.broker_reached = broker_reached


class HealthCheck:
    def __init__(self, probe: Callable[[], Awaitable[None]], *, fresh_s: float = 10.0,
                 reuse_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._probe = probe
        self.fresh_s = fresh_s
        self.reuse_s = reuse_s
        self._clock = clock
        self._served_at = float("-inf")
        self._last: tuple[float, Health] | None = None
        self._running: asyncio.Future[Health] | None = None

    def served(self) -> None:
        """A request completed: the deployment serves."""
        self._served_at = self._clock()

    def failed(self) -> None:
        """A request failed for want of the broker or a worker: earlier evidence no longer holds."""
        self._served_at = float("-inf")
        self._last = None

    async def check(self) -> Health:
        now = self._clock()
        if now - self._served_at <= self.fresh_s:
            ago = now - self._served_at
            return Health(True, "reachable", "ready", f"a request was served {ago:.1f} s ago")
        if self._last is not None and now - self._last[0] <= self.reuse_s:
            return self._last[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._running)

    async def _run_probe(self) -> Health:
        started = self._clock()
        try:
            await self._probe()
            health = Health(True, "reachable", "ready",
                            f"a probe was served in {self._clock() - started:.3f} s")
        except ProbeFailed as failure:
            health = Health(False, "reachable" if failure.broker_reached else "unreachable",
                            "unknown" if not failure.broker_reached else "not serving",
                            str(failure))
        self._last = (self._clock(), health)
        return health

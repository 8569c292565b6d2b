"""The interface every engine behind the launcher implements (vllm, mock).

An engine serves WorkItems: `generate` yields OutputItems for one request as the engine produces
them (one per iteration that advanced the request); the last one carries finish_reason and, for a
prefill, the kv_transfer_params a decoder needs. The launcher coalesces the outputs of all requests
that are ready in one event-loop turn into one OUTPUT message. Engines run on the launcher's asyncio
loop and never touch sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec

from tsslurm.protocol import OutputItem, WorkerStats, WorkItem


class EngineInfo(msgspec.Struct, frozen=True):
    engine: str
    version: str
    kv_connector: dict[str, Any] = {}
    kv_capacity_tokens: int = 0


class EngineError(RuntimeError):
    """The engine cannot go on (failed to start, crashed); the launcher tells the broker and exits."""


class Engine(Protocol):
    async def start(self) -> EngineInfo:
        """Load the model; return when the engine can serve."""
        ...

    def generate(self, item: WorkItem) -> AsyncIterator[OutputItem]:
        ...

    async def abort(self, request_id: str) -> None:
        ...

    def stats(self) -> WorkerStats:
        ...

    async def shutdown(self) -> None:
        ...

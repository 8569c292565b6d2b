"""The mock engine: no model, real time. It emulates a GPU worker so many of them can run as real
Slurm jobs on a machine without GPUs.

Continuous batching like vLLM: every iteration admits waiting requests for prefill (up to a token
budget, while their KV fits; convertible decoders and plain decoders keep their prefill cap) and
advances every running sequence by one token. An iteration lasts `perfmodel.prefill_seconds` of
its prefill tokens plus `perfmodel.decode_step_seconds` of its decode batch and context. A
"decode" request first pulls its KV: it waits `perfmodel.kv_transfer_seconds` of its prompt.

Tokens are deterministic and depend only on the sequence so far (a hash of its last 4 tokens,
printable ASCII ids), so a request continued elsewhere after a failure produces exactly the
tokens an uninterrupted run would. A prefill answers kv_transfer_params that a mock decoder
checks against its own prompt.

Besides the Engine interface (`generate` per request) it offers a batch interface the launcher
prefers: `submit(item)` and a sink that receives each iteration's outputs in one list."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from tsslurm import __version__
from tsslurm.launcher.engines.base import EngineError, EngineInfo
from tsslurm.perfmodel import decode_step_seconds, kv_transfer_seconds, prefill_seconds
from tsslurm.profile.schema import Velocities
from tsslurm.protocol import OutputItem, WorkerStats, WorkItem

BLOCK_TOKENS = 16
CATCH_UP_S = 0.005
"""An iteration that starts at most this long after the previous one was due to end starts at
that due time: the loop's own Python work and timer overshoot are absorbed (as a GPU's next
iteration is already queued), so a busy engine keeps the perf model's pace. Without it the
emulated decode step ran about 0.8 ms (7 %) long (docs/emulation.md)."""


def next_token(w0: int, w1: int, w2: int, w3: int) -> int:
    """The token after a sequence ending in w0 w1 w2 w3 (oldest first): printable ASCII. The hash
    of a tuple of ints is the same in every process (no hash randomization for ints)."""
    return 32 + hash((w0, w1, w2, w3)) % 95


def mock_continuation(tokens: list[int], count: int, stop_token_ids: Collection[int] = ()) -> list[int]:
    """What the mock engine generates after `tokens`: up to `count` tokens, ending at a stop id."""
    w = ([0, 0, 0, 0] + list(tokens[-4:]))[-4:]
    out: list[int] = []
    for _ in range(count):
        token = next_token(*w)
        out.append(token)
        if token in stop_token_ids:
            break
        w = [w[1], w[2], w[3], token]
    return out


def prompt_digest(tokens: list[int]) -> int:
    """Identifies a prompt in kv_transfer_params (stable across processes: ints hash to themselves)."""
    return hash(tuple(tokens))


class _Sequence:
    __slots__ = (
        "context",
        "generated",
        "kv",
        "max_tokens",
        "mode",
        "prompt",
        "ready_at",
        "request_id",
        "stop",
        "w0",
        "w1",
        "w2",
        "w3",
    )

    def __init__(self, item: WorkItem):
        self.request_id = item.request_id
        self.mode = item.mode
        self.prompt = item.prompt_token_ids
        self.w0, self.w1, self.w2, self.w3 = ([0, 0, 0, 0] + item.prompt_token_ids[-4:])[-4:]
        self.context = len(item.prompt_token_ids)
        self.generated = 0
        self.max_tokens = 1 if item.mode == "prefill" else item.max_tokens
        self.stop = frozenset(item.sampling.stop_token_ids)
        self.kv = self.context + (0 if item.mode == "prefill" else self.max_tokens)
        self.ready_at = 0.0

    def advance(self) -> OutputItem:
        token = next_token(self.w0, self.w1, self.w2, self.w3)
        self.w0, self.w1, self.w2, self.w3 = self.w1, self.w2, self.w3, token
        self.generated += 1
        self.context += 1
        finish = "stop" if token in self.stop else "length" if self.generated >= self.max_tokens \
            else None
        return OutputItem(request_id=self.request_id, token_ids=[token], finish_reason=finish)


class MockEngine:
    def __init__(self, *, worker_id: str, role: str, velocities: Velocities,
                 kv_capacity_tokens: int | None = None, prefill_cap_tokens: int = 2048,
                 max_batched_tokens: int = 8192, fail_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep):
        """`fail_after_s`: die (EngineError) at the first iteration after that many seconds of
        serving, as a GPU fails: how tests and benchmarks exercise fatal engine errors."""
        self.worker_id = worker_id
        self.role = role
        self.velocities = velocities
        self.kv_capacity = kv_capacity_tokens or velocities.kv_capacity_tokens
        takes_whole_requests = role in ("decoder", "convertible", "decode")
        self.prefill_budget = min(max_batched_tokens, prefill_cap_tokens) if takes_whole_requests \
            else max_batched_tokens
        self._clock = clock
        self._sleep = sleep
        self._waiting: deque[_Sequence] = deque()
        self._transferring: list[_Sequence] = []
        self._running: dict[str, _Sequence] = {}
        self._prefilling: list[_Sequence] = []
        """This iteration's prefills (an abort must find them too)."""
        self._kv_used = 0
        self._sink: Callable[[list[OutputItem]], None] | None = None
        self._streams: dict[str, asyncio.Queue[OutputItem]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._rates = [0.0, 0.0]
        self.iterations = 0
        self._fail_after_s = fail_after_s
        self._fail_at = float("inf")

    async def start(self) -> EngineInfo:
        if self._fail_after_s is not None:
            self._fail_at = self._clock() + self._fail_after_s
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"mock-engine-{self.worker_id}")
        return EngineInfo(engine="mock", version=__version__,
                          kv_connector={"kind": "mock"}, kv_capacity_tokens=self.kv_capacity)

    def set_sink(self, sink: Callable[[list[OutputItem]], None]) -> None:
        self._sink = sink

    def submit(self, item: WorkItem) -> None:
        sequence = _Sequence(item)
        problem = self._check(item, sequence)
        if problem is not None:
            return self._emit([OutputItem(request_id=item.request_id, error=problem)])
        self._waiting.append(sequence)
        assert self._wake is not None, "start() the engine first"
        self._wake.set()

    async def generate(self, item: WorkItem) -> AsyncIterator[OutputItem]:
        queue: asyncio.Queue[OutputItem] = asyncio.Queue()
        self._streams[item.request_id] = queue
        self.submit(item)
        try:
            while True:
                output = await queue.get()
                yield output
                if output.finish_reason is not None or output.error is not None:
                    return
        finally:
            self._streams.pop(item.request_id, None)

    async def abort(self, request_id: str) -> None:
        self._drop(request_id)
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(OutputItem(request_id=request_id, finish_reason="abort"))

    def stats(self) -> WorkerStats:
        held = self._held_tokens()
        return WorkerStats(running=len(self._running) + len(self._transferring),
                           waiting=len(self._waiting), kv_used_tokens=held,
                           kv_usage=held / self.kv_capacity,
                           prefill_tokens_per_s=self._rates[0], decode_tokens_per_s=self._rates[1])

    def _held_tokens(self) -> int:
        """KV tokens held now, as vLLM reports its cache use (and the simulator its decoders'):
        each admitted sequence's context so far, not the reservation for the rest of its output
        (admission still reserves prompt + max_tokens)."""
        return (sum(s.context for s in self._running.values())
                + sum(s.context for s in self._transferring)
                + sum(s.context for s in self._prefilling))

    def in_flight(self) -> list[str]:
        return ([s.request_id for s in self._waiting] + [s.request_id for s in self._transferring]
                + [s.request_id for s in self._prefilling] + list(self._running))

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def failed(self) -> BaseException | None:
        """The exception that ended the iteration loop, if it died."""
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    # ---- the iteration loop -----------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        due = float("-inf")
        while True:
            if not (self._waiting or self._transferring or self._running):
                self._wake.clear()
                await self._wake.wait()
            now = self._clock()
            start = due if 0.0 <= now - due <= CATCH_UP_S else now
            if start >= self._fail_at:
                raise EngineError(f"injected failure after {self._fail_after_s} s of serving")
            self._finish_transfers(start)
            decoding = list(self._running.values())
            self._prefilling = prefilling = self._admit(start)
            prefill_tokens = sum(s.context for s in prefilling)
            step = (prefill_seconds(prefill_tokens, self.velocities) if prefilling else 0.0) \
                + decode_step_seconds(len(decoding), sum(s.context for s in decoding),
                                      self.velocities.decode_step)
            if not prefilling and not decoding:
                await self._idle_until_transfer(start)
                continue
            due = start + step
            await self._sleep(max(0.0, due - self._clock()))
            self._emit(self._iterate(decoding, prefilling))
            self._prefilling = []
            self._measure(prefill_tokens, len(decoding), step)

    def _admit(self, now: float) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        budget = self.prefill_budget
        waiting = self._waiting
        while waiting:
            sequence = waiting[0]
            if self._kv_used + sequence.kv > self.kv_capacity:
                break
            if sequence.mode != "decode" and admitted and sequence.context > budget:
                break
            waiting.popleft()
            self._kv_used += sequence.kv
            if sequence.mode == "decode":
                sequence.ready_at = now + kv_transfer_seconds(sequence.context, self.velocities)
                self._transferring.append(sequence)
                continue
            budget -= sequence.context
            admitted.append(sequence)
        return admitted

    def _iterate(self, decoding: list[_Sequence], prefilling: list[_Sequence]) -> list[OutputItem]:
        outputs = []
        running = self._running
        for sequence in decoding:
            if sequence.request_id not in running:
                continue
            output = sequence.advance()
            outputs.append(output)
            if output.finish_reason is not None:
                self._release(sequence)
        for sequence in prefilling:
            output = sequence.advance()
            if sequence.mode == "prefill":
                output.kv_transfer_params = self._transfer_params(sequence)
                self._kv_used -= sequence.kv
            elif output.finish_reason is None:
                running[sequence.request_id] = sequence
            else:
                self._kv_used -= sequence.kv
            outputs.append(output)
        self.iterations += 1
        return outputs

    def _finish_transfers(self, now: float) -> None:
        if not self._transferring:
            return
        pending = []
        for sequence in self._transferring:
            if sequence.ready_at <= now:
                self._running[sequence.request_id] = sequence
            else:
                pending.append(sequence)
        self._transferring = pending

    async def _idle_until_transfer(self, now: float) -> None:
        if self._transferring:
            await self._sleep(max(0.0, min(s.ready_at for s in self._transferring) - now))
        elif self._waiting:
            raise EngineError(f"request {self._waiting[0].request_id} can never be admitted")

    def _transfer_params(self, sequence: _Sequence) -> dict[str, Any]:
        blocks = -(-len(sequence.prompt) // BLOCK_TOKENS)
        first = (self.iterations * 1009) % 100_000
        return {"do_remote_prefill": True, "remote_engine_id": self.worker_id,
                "remote_block_ids": list(range(first, first + blocks)),
                "remote_num_tokens": len(sequence.prompt),
                "prompt_digest": prompt_digest(sequence.prompt)}

    def _check(self, item: WorkItem, sequence: _Sequence) -> str | None:
        if item.mode not in ("prefill", "decode", "full"):
            return f"unknown mode {item.mode!r}"
        if not item.prompt_token_ids or item.max_tokens < 1:
            return "empty prompt or max_tokens < 1"
        if sequence.kv > self.kv_capacity:
            return (f"needs {sequence.kv} KV tokens; this engine holds {self.kv_capacity}")
        if item.request_id in self._running:
            return f"request {item.request_id} is already running here"
        if item.mode == "decode":
            return _check_transfer(item)
        return None

    def _drop(self, request_id: str) -> None:
        sequence = self._running.pop(request_id, None)
        if sequence is not None:
            self._kv_used -= sequence.kv
            return
        for collection in (self._waiting, self._transferring, self._prefilling):
            for sequence in collection:
                if sequence.request_id == request_id:
                    collection.remove(sequence)  # type: ignore[arg-type]
                    if collection is not self._waiting:
                        self._kv_used -= sequence.kv
                    return

    def _release(self, sequence: _Sequence) -> None:
        del self._running[sequence.request_id]
        self._kv_used -= sequence.kv

    def _emit(self, outputs: list[OutputItem]) -> None:
        if self._streams:
            rest = []
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is None:
                    rest.append(output)
                else:
                    stream.put_nowait(output)
            outputs = rest
        if outputs and self._sink is not None:
            self._sink(outputs)

    def _measure(self, prefill_tokens: int, decoded: int, step: float) -> None:
        if step <= 0:
            return
        alpha = min(1.0, step / 2.0)
        self._rates[0] += alpha * (prefill_tokens / step - self._rates[0])
        self._rates[1] += alpha * (decoded / step - self._rates[1])


def _check_transfer(item: WorkItem) -> str | None:
    params = item.kv_transfer_params or {}
    if not params.get("remote_engine_id") or "remote_block_ids" not in params:
        return "a decode needs the kv_transfer_params of a prefill"
    if params.get("remote_num_tokens") != len(item.prompt_token_ids) \
            or params.get("prompt_digest") != prompt_digest(item.prompt_token_ids):
        return "kv_transfer_params do not belong to this prompt"
    return None

"""Timed requests against running engines: a prefill load level, a batch decoding in lockstep,
KV pulls from a prefiller to a decoder. Each probe sends WorkItems through the engine interface
the launcher uses (`generate`), with seeded random prompts of plain tokens, and returns a raw
measurement record; every probe is bounded by a timeout."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

from tsslurm.launcher.engines.base import Engine, EngineError
from tsslurm.profiler.fit import Stamps, lockstep_sample
from tsslurm.profiler.results import LockstepSample, PrefillLevel, PullSample
from tsslurm.protocol import Sampling, WorkItem

PROBE_TIMEOUT_S = 600.0


class ProbeError(EngineError):
    """The engine refused or failed a probe's request, or the probe took too long."""


class Prober:
    """Makes unique request ids and seeded prompts of token ids in [vocab/16, vocab/2) (ordinary
    tokens, never the special ones at either end of a vocabulary)."""

    def __init__(self, vocab_size: int, seed: int, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.low, self.high = max(4, vocab_size // 16), max(5, vocab_size // 2)
        self.rng = random.Random(seed)
        self.timeout_s = timeout_s
        self.count = 0

    def prompts(self, count: int, tokens: int) -> list[list[int]]:
        return [[self.rng.randrange(self.low, self.high) for _ in range(tokens)]
                for _ in range(count)]

    def item(self, prompt: list[int], mode: str = "full", max_tokens: int = 1,
             kv_transfer_params: dict[str, Any] | None = None) -> WorkItem:
        self.count += 1
        return WorkItem(request_id=f"profile-{self.count}", mode=mode, prompt_token_ids=prompt,
                        max_tokens=max_tokens, sampling=Sampling(ignore_eos=True),
                        kv_transfer_params=kv_transfer_params)

    async def prefill_level(self, engine: Engine, concurrency: int, tokens: int) -> PrefillLevel:
        """`concurrency` prompts submitted at once, each answered with its first token."""
        items = [self.item(p) for p in self.prompts(concurrency, tokens)]
        began = time.perf_counter()
        await self._all(engine, items)
        return PrefillLevel(concurrency=concurrency, input_tokens=tokens,
                            seconds=time.perf_counter() - began)

    async def lockstep(self, engine: Engine, batch: int, input_tokens: int,
                       output_tokens: int) -> LockstepSample:
        """A batch whose prompts are first prefilled (so the prefix cache holds them), then sent
        again together for `output_tokens` each: one short prefill step, then lockstep decode."""
        prompts = self.prompts(batch, input_tokens)
        await self._all(engine, [self.item(p) for p in prompts])
        streams = await self._all(engine, [self.item(p, max_tokens=output_tokens) for p in prompts])
        return lockstep_sample(streams, input_tokens, output_tokens)

    async def pull(self, prefiller: Engine, decoder: Engine, requests: int, tokens: int,
                   pulled_counter: Any) -> PullSample:
        """Prefill on `prefiller` (which keeps the KV for a remote decoder), then time the
        decoder pulling every prompt's KV and answering its first token."""
        prompts = self.prompts(requests, tokens)
        answers = await asyncio.gather(*(self._params(prefiller, p) for p in prompts))
        before = pulled_counter()
        began = time.perf_counter()
        await self._all(decoder, [self.item(p, "decode", 1, params)
                                  for p, params in zip(prompts, answers)])
        return PullSample(requests=requests, input_tokens=tokens,
                          seconds=time.perf_counter() - began,
                          pulled_tokens=pulled_counter() - before)

    async def _params(self, prefiller: Engine, prompt: list[int]) -> dict[str, Any]:
        stream = await self._bounded(_stream(prefiller, self.item(prompt, "prefill"), []))
        params = stream[-1][2] if stream else None
        if not params:
            raise ProbeError("the prefiller answered no kv_transfer_params for a prefill")
        return params

    async def _all(self, engine: Engine, items: list[WorkItem]) -> list[Stamps]:
        streams = await self._bounded(asyncio.gather(*(_stream(engine, i, []) for i in items)))
        return [[(at, tokens) for at, tokens, _ in stream] for stream in streams]

    async def _bounded(self, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except TimeoutError:
            raise ProbeError(f"the engine did not answer a probe within {self.timeout_s:g} s") \
                from None


async def _stream(engine: Engine, item: WorkItem,
                  into: list[tuple[float, int, Any]]) -> list[tuple[float, int, Any]]:
    async for output in engine.generate(item):
        if output.error:
            raise ProbeError(f"the engine failed a {item.mode} request of "
                             f"{len(item.prompt_token_ids)} tokens: {output.error}")
        into.append((time.perf_counter(), len(output.token_ids), output.kv_transfer_params))
    return into

"""The mock engine (tsslurm/launcher/engines/mock.py): its iterations follow tsslurm.perfmodel
exactly (checked on a virtual clock), KV capacity and the convertible prefill cap limit admission,
prefill -> decode handoff works between two engines, and tokens depend only on the sequence so
far, so a continuation elsewhere gives exactly the uninterrupted answer."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from tsslurm.launcher.engines.mock import MockEngine, mock_continuation, next_token
from tsslurm.perfmodel import decode_step_seconds, kv_transfer_seconds, prefill_seconds
from tsslurm.profile.schema import DecodeStep, Velocities
from tsslurm.protocol import OutputItem, Sampling, WorkItem

pytestmark = pytest.mark.timeout(60)

V = Velocities(prefill_tokens_per_s=10_000, kv_transfer_tokens_per_s=100_000,
               kv_bytes_per_token=1024, kv_capacity_tokens=100_000,
               decode_step=DecodeStep(base_ms=10, per_sequence_ms=1, per_context_token_us=2),
               decode_tokens_per_s=[[1.0]], prefill_overhead_ms=5)


class VirtualTime:
    """The engine's clock and sleep: sleeping advances time at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Run:
    """An engine on virtual time with every output batch recorded as (time, outputs)."""

    def __init__(self, role: str = "decoder", velocities: Velocities = V, **kw: object):
        self.time = VirtualTime()
        self.engine = MockEngine(worker_id=f"mock-{role}", role=role, velocities=velocities,
                                 clock=self.time.clock, sleep=self.time.sleep, **kw)  # type: ignore[arg-type]
        self.batches: list[tuple[float, list[OutputItem]]] = []

    async def start(self) -> None:
        await self.engine.start()
        self.engine.set_sink(lambda outputs: self.batches.append((self.time.now, outputs)))

    async def until_finished(self, request_ids: set[str], limit: int = 100_000) -> None:
        for _ in range(limit):
            if request_ids <= self.finished():
                return
            await asyncio.sleep(0)
        raise AssertionError(f"unfinished: {request_ids - self.finished()}")

    def finished(self) -> set[str]:
        return {o.request_id for _, batch in self.batches for o in batch
                if o.finish_reason is not None or o.error is not None}

    def times_of(self, request_id: str) -> list[float]:
        return [t for t, batch in self.batches for o in batch if o.request_id == request_id]

    def tokens_of(self, request_id: str) -> list[int]:
        return [t for _, batch in self.batches for o in batch if o.request_id == request_id
                for t in o.token_ids]


def item(request_id: str, prompt: list[int], max_tokens: int, mode: str = "full",
         **kw: object) -> WorkItem:
    return WorkItem(request_id=request_id, mode=mode, prompt_token_ids=prompt,
                    max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def test_a_request_follows_the_perf_model_token_by_token() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("a", list(range(1000)), 4))
        await run.until_finished({"a"})
        expected, t = [], prefill_seconds(1000, V)
        expected.append(t)
        for context in (1001, 1002, 1003):
            t += decode_step_seconds(1, context, V.decode_step)
            expected.append(t)
        assert run.times_of("a") == pytest.approx(expected, abs=1e-9)
        await run.engine.shutdown()

    asyncio.run(scenario())


class LateTime(VirtualTime):
    """Every sleep wakes 1 ms late (a busy machine's timer overshoot)."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + 0.001)


def test_a_busy_engine_keeps_the_perf_model_pace_when_its_timer_wakes_late() -> None:
    async def scenario() -> None:
        run = Run()
        run.time = LateTime()
        run.engine._clock, run.engine._sleep = run.time.clock, run.time.sleep
        await run.start()
        run.engine.submit(item("a", list(range(1000)), 50))
        await run.until_finished({"a"})
        model = prefill_seconds(1000, V) + sum(decode_step_seconds(1, 1000 + k, V.decode_step)
                                               for k in range(1, 50))
        assert run.times_of("a")[-1] == pytest.approx(model, abs=0.0025)  # not 50 x 1 ms late
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_reported_kv_use_is_the_context_held_not_the_reservation() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("a", list(range(1000)), 50))
        for _ in range(100_000):
            if len(run.tokens_of("a")) >= 10:
                break
            await asyncio.sleep(0)
        generated = len(run.tokens_of("a"))
        assert 10 <= generated < 50
        assert run.engine.stats().kv_used_tokens == 1000 + generated
        await run.until_finished({"a"})
        assert run.engine.stats().kv_used_tokens == 0
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_requests_arriving_together_share_a_prefill_and_a_decode_batch() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("a", [1] * 600, 2))
        run.engine.submit(item("b", [2] * 400, 2))
        await run.until_finished({"a", "b"})
        first = prefill_seconds(1000, V)
        second = first + decode_step_seconds(2, 601 + 401, V.decode_step)
        assert [t for t, _ in run.batches] == pytest.approx([first, second])
        assert [len(batch) for _, batch in run.batches] == [2, 2]
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_kv_capacity_limits_admission() -> None:
    async def scenario() -> None:
        small = msgspec.structs.replace(V, kv_capacity_tokens=3_000)
        run = Run(velocities=small)
        await run.start()
        for name in "abc":
            run.engine.submit(item(name, [7] * 1000, 3))  # 1,003 KV tokens each: two fit
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert run.engine.stats().waiting == 1
        await run.until_finished(set("abc"))
        assert min(run.times_of("c")) > max(run.times_of("a"))
        assert run.engine.stats().kv_used_tokens == 0
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_a_convertible_keeps_its_prefill_cap_per_iteration() -> None:
    async def scenario() -> None:
        run = Run(role="convertible", prefill_cap_tokens=1_500)
        await run.start()
        for name in "abc":
            run.engine.submit(item(name, [3] * 1000, 2))
        await run.until_finished(set("abc"))
        firsts = [min(run.times_of(name)) for name in "abc"]
        assert firsts[0] < firsts[1] < firsts[2], "one 1,000-token prefill per iteration"
        prefiller = Run(role="prefiller", prefill_cap_tokens=1_500)
        await prefiller.start()
        for name in "abc":
            prefiller.engine.submit(item(name, [3] * 1000, 1, mode="prefill"))
        await prefiller.until_finished(set("abc"))
        assert len(prefiller.batches) == 1, "a prefiller is not capped"
        await run.engine.shutdown()
        await prefiller.engine.shutdown()

    asyncio.run(scenario())


def test_prefill_then_decode_on_another_engine_gives_the_uninterrupted_answer() -> None:
    async def scenario() -> None:
        prompt = [11, 12, 13, 14, 15, 16]
        prefiller, decoder = Run("prefiller"), Run("decoder")
        await prefiller.start()
        await decoder.start()
        prefiller.engine.submit(item("r", prompt, 1, mode="prefill"))
        await prefiller.until_finished({"r"})
        (_, (answer,)), = prefiller.batches
        assert answer.finish_reason == "length" and answer.kv_transfer_params is not None
        assert answer.kv_transfer_params["remote_engine_id"] == "mock-prefiller"
        decoder.engine.submit(item("r", prompt, 8, mode="decode",
                                   kv_transfer_params=answer.kv_transfer_params))
        await decoder.until_finished({"r"})
        assert decoder.tokens_of("r") == mock_continuation(prompt, 8)
        first = kv_transfer_seconds(len(prompt), V) + decode_step_seconds(1, len(prompt),
                                                                           V.decode_step)
        assert min(decoder.times_of("r")) == pytest.approx(first)
        for engine in (prefiller.engine, decoder.engine):
            await engine.shutdown()

    asyncio.run(scenario())


def test_a_decode_refuses_kv_params_of_another_prompt() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        params = {"remote_engine_id": "p", "remote_block_ids": [1], "remote_num_tokens": 3,
                  "prompt_digest": 0}
        run.engine.submit(item("x", [1, 2, 3], 4, mode="decode", kv_transfer_params=params))
        run.engine.submit(item("y", [1, 2, 3], 4, mode="decode"))
        assert run.finished() == {"x", "y"}
        errors = [o.error for _, batch in run.batches for o in batch]
        assert "do not belong to this prompt" in errors[0] and "need" in errors[1]
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_a_continuation_elsewhere_produces_exactly_the_rest() -> None:
    prompt = [104, 101, 108, 108, 111]
    whole = mock_continuation(prompt, 40)
    assert mock_continuation(prompt + whole[:17], 23) == whole[17:]
    assert all(32 <= t < 127 for t in whole)
    assert mock_continuation([1], 3) == mock_continuation([0, 0, 0, 1], 3)
    assert next_token(1, 2, 3, 4) != next_token(2, 1, 3, 4)


def test_stop_tokens_end_the_answer() -> None:
    prompt = [5, 6, 7]
    free = mock_continuation(prompt, 30)
    stop = free[10]
    stopped = mock_continuation(prompt, 30, [stop])
    assert stopped == free[:free.index(stop) + 1]

    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("s", prompt, 30, sampling=Sampling(stop_token_ids=[stop])))
        await run.until_finished({"s"})
        assert run.tokens_of("s") == stopped
        assert run.batches[-1][1][-1].finish_reason == "stop"
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_hundreds_of_concurrent_requests_one_output_message_per_iteration() -> None:
    async def scenario() -> None:
        run = Run(prefill_cap_tokens=8192)
        await run.start()
        names = {f"r{i}" for i in range(300)}
        for i, name in enumerate(sorted(names)):
            run.engine.submit(item(name, [i % 90 + 32] * 20, 16))
        await run.until_finished(names)
        assert all(len(run.tokens_of(n)) == 16 for n in names)
        assert len(run.batches) == 16, "one prefill iteration, then 15 batched decode iterations"
        assert sum(len(batch) for _, batch in run.batches) == 300 * 16
        await run.engine.shutdown()

    began = time.perf_counter()
    asyncio.run(scenario())
    assert time.perf_counter() - began < 5.0


def test_abort_frees_the_kv_and_stops_the_tokens() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("a", [1] * 100, 1000))
        await run.until_finished(set(), limit=1)
        while len(run.tokens_of("a")) < 3:
            await asyncio.sleep(0)
        await run.engine.abort("a")
        produced = len(run.tokens_of("a"))
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(run.tokens_of("a")) == produced
        assert run.engine.stats().kv_used_tokens == 0 and run.engine.in_flight() == []
        await run.engine.shutdown()

    asyncio.run(scenario())


def test_generate_interface_and_real_time() -> None:
    async def scenario() -> tuple[list[int], float]:
        engine = MockEngine(worker_id="rt", role="decoder", velocities=V)
        await engine.start()
        began = time.perf_counter()
        tokens = [t async for output in engine.generate(item("g", [9] * 50, 20))
                  for t in output.token_ids]
        elapsed = time.perf_counter() - began
        await engine.shutdown()
        return tokens, elapsed

    tokens, elapsed = asyncio.run(scenario())
    assert tokens == mock_continuation([9] * 50, 20)
    expected = prefill_seconds(50, V) + sum(decode_step_seconds(1, 50 + k, V.decode_step)
                                            for k in range(1, 20))
    assert elapsed >= expected * 0.95, "the engine takes at least the model's time"
    assert elapsed <= expected * 4 + 0.5, "and runs in real time, not slower (a loose bound: the " \
                                          "machine may be busy)"


def test_abort_during_a_prefill_iteration() -> None:
    async def scenario() -> None:
        run = Run()
        await run.start()
        run.engine.submit(item("long", [1] * 5000, 50))
        run.engine.submit(item("other", [2] * 10, 3))
        await asyncio.sleep(0)  # the engine admits both and sleeps through the prefill
        assert set(run.engine.in_flight()) == {"long", "other"}
        await run.engine.abort("long")
        await run.until_finished({"other"})
        for _ in range(20):
            await asyncio.sleep(0)
        assert run.tokens_of("long") == [] and run.engine.in_flight() == []
        assert run.engine.stats().kv_used_tokens == 0
        await run.engine.shutdown()

    asyncio.run(scenario())

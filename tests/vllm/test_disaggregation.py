"""The key test of the serving path at the engine level: real vLLM engines with the NIXL connector
(float32, the local-tiny profile's choice). One prefiller and one decoder that is also a
convertible decoder; the plain reference is vllm.LLM with no connector at all.

Prefix caching is off in these engines so every prefill is computed (or pulled) in full and the
token counters say exactly where each prompt's KV came from."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from vllm_helpers import PlainReference, random_prompts, tiny_profile

from tsslurm.launcher.engines.base import EngineError
from tsslurm.launcher.engines.vllm import VllmEngine
from tsslurm.protocol import OutputItem, Sampling, WorkItem

MAX_TOKENS = 24
PROMPTS = random_prompts(3, (100, 700), seed=5)
"""Longer than NIXL's kv_recompute_threshold (64 tokens), below which a decoder recomputes."""


class Pair:
    def __init__(self, prefiller: VllmEngine, decoder: VllmEngine, plain: PlainReference):
        self.prefiller = prefiller
        self.decoder = decoder
        self.plain = plain


@pytest.fixture(scope="module")
def engines(tiny_model: Path, runner: asyncio.Runner,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    state = tmp_path_factory.mktemp("state")
    plain = PlainReference(tiny_model, PROMPTS, MAX_TOKENS, state)
    profile = tiny_profile(tiny_model, kv_connector="nixl",
                           extra_args={"enable_prefix_caching": False})
    cpus = sorted(os.sched_getaffinity(0))
    prefiller = VllmEngine(profile, state, cpus=[cpus[0]], start_timeout_s=240)
    decoder = VllmEngine(profile, state, cpus=[cpus[-1]], start_timeout_s=240)
    try:
        runner.run(start(prefiller, decoder))
        yield Pair(prefiller, decoder, plain)
    finally:
        plain.kill()
        runner.run(shut_down(prefiller, decoder))


async def start(*engines: VllmEngine) -> None:
    await asyncio.gather(*(engine.start() for engine in engines))


async def shut_down(*engines: VllmEngine) -> None:
    await asyncio.gather(*(engine.shutdown() for engine in engines))


async def collect(engine: VllmEngine, item: WorkItem) -> list[OutputItem]:
    return [output async for output in engine.generate(item)]


def tokens_of(outputs: list[OutputItem]) -> list[int]:
    return [token for output in outputs for token in output.token_ids]


def disaggregated(pair: Pair, runner: asyncio.Runner, prompt: list[int], rid: str) -> list[int]:
    prefilled = runner.run(collect(pair.prefiller, WorkItem(
        request_id=f"{rid}-p", mode="prefill", prompt_token_ids=prompt, max_tokens=MAX_TOKENS)))
    assert [o.token_ids for o in prefilled] == [[]] * len(prefilled), "a prefill streams no tokens"
    params = prefilled[-1].kv_transfer_params
    assert prefilled[-1].finish_reason == "length" and params and params.get("do_remote_prefill")
    decoded = runner.run(collect(pair.decoder, WorkItem(
        request_id=f"{rid}-d", mode="decode", prompt_token_ids=prompt, max_tokens=MAX_TOKENS,
        kv_transfer_params=params)))
    assert decoded[-1].finish_reason == "length" and decoded[-1].error is None
    return tokens_of(decoded)


@pytest.mark.timeout(420)
def test_disaggregated_converted_and_plain_engines_agree_token_for_token(
        engines: Pair, runner: asyncio.Runner) -> None:
    reference = engines.plain.outputs()
    decoder = engines.decoder.counters
    for index, prompt in enumerate(PROMPTS):
        before = (decoder.prompt_tokens_external, decoder.prompt_tokens_computed)
        handed_off = disaggregated(engines, runner, prompt, f"kv{index}")
        pulled = decoder.prompt_tokens_external - before[0]
        assert pulled == len(prompt), "the decoder's prompt KV came through the NIXL transfer"
        assert decoder.prompt_tokens_computed == before[1], "the decoder computed no prompt token"

        before = (decoder.prompt_tokens_external, decoder.prompt_tokens_computed)
        converted = tokens_of(runner.run(collect(engines.decoder, WorkItem(
            request_id=f"full{index}", mode="full", prompt_token_ids=prompt,
            max_tokens=MAX_TOKENS))))
        assert decoder.prompt_tokens_external == before[0], "a converted request pulls no KV"
        assert decoder.prompt_tokens_computed - before[1] == len(prompt)

        assert len(reference[index]) == MAX_TOKENS
        assert handed_off == reference[index]
        assert converted == reference[index]


@pytest.mark.timeout(120)
def test_engines_are_pinned_to_their_own_cpus(engines: Pair) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for engine, cpu in ((engines.prefiller, cpus[0]), (engines.decoder, cpus[-1])):
        assert engine.engine_pids, "the engine started an engine-core process"
        for pid in engine.engine_pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                assert os.sched_getaffinity(int(tid)) == {cpu}


@pytest.mark.timeout(120)
def test_deltas_stream_and_abort_ends_the_stream(engines: Pair, runner: asyncio.Runner) -> None:
    item = WorkItem(request_id="long", mode="full", prompt_token_ids=PROMPTS[0][:50],
                    max_tokens=1500, sampling=Sampling(ignore_eos=True))

    async def abort_after(count: int) -> list[OutputItem]:
        outputs = []
        async for output in engines.decoder.generate(item):
            outputs.append(output)
            if len(outputs) == count:
                assert engines.decoder.in_flight() == ["long"]
                await engines.decoder.abort("long")
        return outputs

    outputs = runner.run(asyncio.wait_for(abort_after(5), 60))
    assert all(len(o.token_ids) >= 1 for o in outputs[:5]), "each delta carries new tokens"
    assert outputs[-1].finish_reason == "abort"
    assert len(tokens_of(outputs)) < 1500
    assert engines.decoder.in_flight() == []


@pytest.mark.timeout(120)
def test_bad_requests_end_with_a_clear_error(engines: Pair, runner: asyncio.Runner) -> None:
    def last(item: WorkItem) -> OutputItem:
        return runner.run(asyncio.wait_for(collect(engines.decoder, item), 60))[-1]

    too_long = last(WorkItem(request_id="b1", mode="full", prompt_token_ids=[5] * 3000,
                             max_tokens=4))
    assert too_long.error and "maximum context length is 2048" in too_long.error
    unknown = last(WorkItem(request_id="b2", mode="full", prompt_token_ids=[9999], max_tokens=4))
    assert unknown.error and "out of vocabulary" in unknown.error
    no_params = last(WorkItem(request_id="b3", mode="decode", prompt_token_ids=[5], max_tokens=4))
    assert no_params.error and "kv_transfer_params" in no_params.error
    mode = last(WorkItem(request_id="b4", mode="sideways", prompt_token_ids=[5], max_tokens=4))
    assert mode.error and "unknown work mode" in mode.error
    gone = last(WorkItem(
        request_id="b5", mode="decode", prompt_token_ids=PROMPTS[0], max_tokens=4,
        kv_transfer_params={"do_remote_prefill": True, "remote_engine_id": "nobody",
                            "remote_request_id": "r", "remote_block_ids": [[1, 2]],
                            "remote_host": "127.0.0.1", "remote_port": 9,
                            "remote_num_tokens": len(PROMPTS[0]), "tp_size": 1}))
    assert gone.error and "KV transfer from the prefiller failed" in gone.error
    served = runner.run(collect(engines.decoder, WorkItem(
        request_id="after", mode="full", prompt_token_ids=PROMPTS[1], max_tokens=3)))
    assert len(tokens_of(served)) == 3, "the engine still serves after bad requests"


@pytest.mark.timeout(120)
def test_stats_report_the_engines_own_load_and_rates(engines: Pair,
                                                     runner: asyncio.Runner) -> None:
    decoder = engines.decoder
    seen = []

    async def load() -> None:
        items = [WorkItem(request_id=f"s{i}", mode="full", prompt_token_ids=prompt,
                          max_tokens=64, sampling=Sampling(ignore_eos=True))
                 for i, prompt in enumerate(random_prompts(8, (100, 300), seed=9))]
        streams = asyncio.gather(*(collect(decoder, item) for item in items))
        while not streams.done():
            seen.append(decoder.stats())
            await asyncio.sleep(0.02)
        await streams

    generated = decoder.counters.generation_tokens
    runner.run(asyncio.wait_for(load(), 90))
    assert decoder.counters.generation_tokens - generated == 8 * 64
    assert max(s.running for s in seen) >= 2
    assert max(s.kv_usage for s in seen) > 0 and max(s.kv_used_tokens for s in seen) > 0
    after = decoder.stats()
    assert after.running == 0 and after.decode_tokens_per_s > 0 and after.prefill_tokens_per_s > 0


@pytest.mark.timeout(120)
def test_shutdown_leaves_no_engine_process(engines: Pair, runner: asyncio.Runner) -> None:
    pids = engines.prefiller.engine_pids + engines.decoder.engine_pids
    assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    began = time.monotonic()
    runner.run(shut_down(engines.prefiller, engines.decoder))
    assert time.monotonic() - began < 30
    assert not any(_alive(pid) for pid in pids)
    runner.run(engines.decoder.shutdown())
    with pytest.raises(EngineError, match="not running"):
        runner.run(collect(engines.decoder, WorkItem(request_id="x", mode="full",
                                                     prompt_token_ids=[5], max_tokens=1)))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

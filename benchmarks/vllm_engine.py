"""Benchmark of the real vLLM engine behind the launcher (tiny model, CPU): start time, memory per
engine, prefill / KV-transfer / decode speeds, and a request served disaggregated next to the same
request served locally by the same decoder (the reference measured in the same run).

    .venv/bin/python benchmarks/vllm_engine.py [--connector nixl|example] [--model DIR]

Two engines (a prefiller pinned to the first CPU, a decoder to the last), one process like two
launchers would be, except that the vLLM import is paid once. Figures feed profiles/local-tiny.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import msgspec
import psutil

from tsslurm.launcher.engines.vllm import VllmEngine
from tsslurm.models.tiny import build_tiny_model
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Profile
from tsslurm.protocol import OutputItem, Sampling, WorkItem

PROCESS_START = psutil.Process().create_time()


def pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, 2048) for _ in range(length)] for _ in range(count)]


async def run(engine: VllmEngine, item: WorkItem) -> list[OutputItem]:
    return [output async for output in engine.generate(item)]


async def timed(coroutines: list) -> tuple[float, list]:
    began = time.perf_counter()
    results = await asyncio.gather(*coroutines)
    return time.perf_counter() - began, results


def profile_for(model: Path, connector: str) -> Profile:
    profile = load_profile("local-tiny")
    return msgspec.structs.replace(
        profile, model=msgspec.structs.replace(profile.model, path=str(model)),
        engine=msgspec.structs.replace(profile.engine, kv_connector=connector))


async def start_engines(profile: Profile, state: Path) -> tuple[VllmEngine, VllmEngine]:
    cpus = sorted(os.sched_getaffinity(0))
    prefiller = VllmEngine(profile, state, cpus=[cpus[0]])
    decoder = VllmEngine(profile, state, cpus=[cpus[-1]])
    await prefiller.start()
    print(f"first engine ready {time.time() - PROCESS_START:.1f} s after process start "
          f"(engine start {prefiller.start_seconds:.1f} s, vLLM import included)")
    front_one = pss_mib(os.getpid())
    await decoder.start()
    print(f"second engine start {decoder.start_seconds:.1f} s")
    print(f"memory (PSS): launcher-side process {front_one:.0f} MiB with one engine, "
          f"{pss_mib(os.getpid()):.0f} MiB with two; engine cores "
          + ", ".join(f"{pss_mib(pid):.0f} MiB" for e in (prefiller, decoder)
                      for pid in e.engine_pids))
    return prefiller, decoder


async def measure(prefiller: VllmEngine, decoder: VllmEngine) -> None:
    long = prompts(16, 1000, seed=1)
    seconds, answers = await timed([run(prefiller, WorkItem(
        request_id=f"pf{i}", mode="prefill", prompt_token_ids=p, max_tokens=1))
        for i, p in enumerate(long)])
    print(f"prefill: 16 x 1000 tokens in {seconds:.2f} s = {16000 / seconds:,.0f} tokens/s")
    seconds, _ = await timed([run(decoder, WorkItem(
        request_id=f"kv{i}", mode="decode", prompt_token_ids=p, max_tokens=1,
        kv_transfer_params=a[-1].kv_transfer_params)) for i, (p, a) in enumerate(zip(long, answers))])
    print(f"KV pull + first token on the decoder: 16 x 1000 tokens in {seconds:.2f} s = "
          f"{16000 / seconds:,.0f} tokens/s (pulled {decoder.counters.prompt_tokens_external})")
    for concurrency in (1, 16):
        short = prompts(concurrency, 16, seed=concurrency)
        seconds, results = await timed([run(decoder, WorkItem(
            request_id=f"d{concurrency}-{i}", mode="full", prompt_token_ids=p, max_tokens=128,
            sampling=Sampling(ignore_eos=True))) for i, p in enumerate(short)])
        tokens = sum(len(o.token_ids) for r in results for o in r)
        print(f"decode, {concurrency:2d} concurrent: {tokens / seconds:,.0f} tokens/s "
              f"({1000 * seconds / 128:.1f} ms per step)")
    await handoff_next_to_local(prefiller, decoder)


async def handoff_next_to_local(prefiller: VllmEngine, decoder: VllmEngine) -> None:
    prompt = prompts(1, 1500, seed=7)[0]
    began = time.perf_counter()
    answer = await run(prefiller, WorkItem(request_id="h-p", mode="prefill",
                                           prompt_token_ids=prompt, max_tokens=32))
    handed = await run(decoder, WorkItem(request_id="h-d", mode="decode", prompt_token_ids=prompt,
                                         max_tokens=32,
                                         kv_transfer_params=answer[-1].kv_transfer_params))
    disaggregated = time.perf_counter() - began
    began = time.perf_counter()
    local = await run(prefiller, WorkItem(request_id="h-f", mode="full",
                                          prompt_token_ids=list(reversed(prompt)), max_tokens=32))
    full = time.perf_counter() - began
    assert sum(len(o.token_ids) for o in handed) == sum(len(o.token_ids) for o in local) == 32
    print(f"1500-token prompt, 32 tokens: disaggregated {1000 * disaggregated:.0f} ms; "
          f"served locally (reference) {1000 * full:.0f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connector", choices=["nixl", "example"], default="nixl")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_tiny_model(Path(scratch) / "tiny-llama")
        prefiller, decoder = await start_engines(profile_for(model, args.connector),
                                                 Path(scratch) / "state")
        try:
            await measure(prefiller, decoder)
        finally:
            began = time.perf_counter()
            await asyncio.gather(prefiller.shutdown(), decoder.shutdown())
            print(f"shutdown of both engines {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())

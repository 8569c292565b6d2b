"""Benchmark of the OpenAI gateway: what one `tsslurm gateway` process adds to the raw broker
client (tsslurm.client.AsyncClient), both measured in the same run against the same deployment:
`tsslurm broker` and one mock decoder (`python -m tsslurm.launcher`), all on loopback.

    .venv/bin/python benchmarks/gateway.py [--requests 200] [--seconds 10] [--streams 500]
                                           [--stream-tokens 256]

The mock decoder's model time is small and fixed (2 ms a decode step whatever the batch, prefill
nearly free), so differences are the serving path's. Phases:
1. latency: one request at a time, 32 streamed tokens each, raw and gateway requests
   interleaved. TTFT (send to first token), the inter-token interval, and the token delay: for
   each token position, the median arrival time (from the send) through the gateway minus the
   same through the raw client, averaged over positions - the latency each token gains.
2. requests/s: closed loop, `--concurrency` lanes, 1 output token, whole answers (no stream).
3. streams: `--streams` concurrent streams of `--stream-tokens` tokens: tokens/s at the client
   and the gateway's CPU time per streamed token.
4. detokenize (no processes): microseconds per token to stream the text of a 2,000-token answer
   one token at a time with a byte-level BPE (trained here on the tiny model's corpus): the
   gateway's byte table, its window decoder, and the whole-list decoder of tsslurm.tokenizer.
The HTTP client is aiohttp in this process (httpx tops out near 300 requests/s here with 32
connections, below the gateway); the CPU time of every process is reported, so a saturated load
generator shows. Prints a table (and with --markdown the docs/benchmarks.md
section)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
from broker_deployment import TSSLURM, Processes, worker_env

from tsslurm.client import AsyncClient
from tsslurm.gateway.keys import create_key
from tsslurm.gateway.serve import GatewayProcess, spawn_gateway

PROFILE = """deployment: bench-gateway
model: {name: mock-llama, path: "mock://none", max_context_tokens: 16384}
engine: {kind: mock, convertible_prefill_cap_tokens: 1000000, max_num_batched_tokens: 1000000}
partitions:
  - name: a100
    gres: gpu:a100
    template: a100.sbatch
    velocities:
      prefill_tokens_per_s: 1.0e+12
      kv_transfer_tokens_per_s: 1.0e+12
      kv_bytes_per_token: 131072
      kv_capacity_tokens: 50000000
      decode_step: {base_ms: 2.0, per_sequence_ms: 0.0, per_context_token_us: 0.0}
      decode_tokens_per_s: [[1.0e+6, 1.0e+6, 1.0e+6], [1.0e+6, 1.0e+6, 1.0e+6], [1.0e+6, 1.0e+6, 1.0e+6]]
buckets: {input_edges: [1024, 4096], output_edges: [128, 512]}
broker: {host: 127.0.0.1, heartbeat_s: 1.0, liveness: 10, request_timeout_s: 600}
"""


class Deployment:
    """Broker, one mock decoder and a gateway, each a child process."""

    def __init__(self, root: Path):
        self.root = root
        self.state = root / "state"
        self.processes = Processes(root)
        self.gateway: GatewayProcess | None = None
        self.key = ""

    def start(self) -> None:
        profile = self.root / "profile.yaml"
        profile.write_text(PROFILE)
        self.processes.spawn("broker", [TSSLURM, "broker", "-p", str(profile), "--state-dir",
                                        str(self.state)], dict(os.environ))
        self.processes.wait_for("broker", "broker bench-gateway")
        self.processes.spawn("d1", [sys.executable, "-m", "tsslurm.launcher"],
                             worker_env(profile, self.state, "d1", "decode"))
        self.processes.wait_for("broker", "worker d1 ready")
        self.key = create_key(self.state, "bench")
        self.gateway = spawn_gateway(self.state, self.root / "gateway.log")
        self.processes.children["gateway"] = self.gateway.process

    def cpu_seconds(self) -> dict[str, float]:
        return self.processes.cpu_seconds() | {"client": time.process_time()}

    def stop(self) -> None:
        self.processes.stop()


@contextmanager
def deployment() -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="tsslurm-bench-gateway-") as tmp:
        made = Deployment(Path(tmp))
        try:
            made.start()
            yield made
        finally:
            made.stop()


class Paths:
    """The same request through the raw client and through the gateway: arrival times of each
    token, in seconds from the send."""

    def __init__(self, d: Deployment, client: AsyncClient, http: aiohttp.ClientSession):
        self.client = client
        self.http = http
        self.headers = {"Authorization": f"Bearer {d.key}"}
        self.events = 0
        """Server-sent events with text received through the gateway."""

    async def raw_stream(self, prompt: str, max_tokens: int) -> list[float]:
        began, times = time.perf_counter(), []
        async for chunk in self.client.stream(list(prompt.encode()), max_tokens):
            times += [time.perf_counter() - began] * len(chunk.token_ids)
        return times

    async def gateway_stream(self, prompt: str, max_tokens: int) -> list[float]:
        body = {"model": "mock-llama", "prompt": prompt, "max_tokens": max_tokens,
                "stream": True}
        began, times = time.perf_counter(), []
        async with self.http.post("/v1/completions", json=body, headers=self.headers) as response:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    text = json.loads(line[6:])["choices"][0]["text"]
                    times += [time.perf_counter() - began] * len(text)
                    self.events += bool(text)
        return times

    async def raw_whole(self, prompt: str) -> None:
        result = await self.client.generate(list(prompt.encode()), 1, stream=False)
        assert result.completion_tokens == 1

    async def gateway_whole(self, prompt: str) -> None:
        async with self.http.post("/v1/completions", headers=self.headers, json={
                "model": "mock-llama", "prompt": prompt, "max_tokens": 1}) as response:
            assert response.status == 200, await response.text()
            await response.read()


def prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(chr(rng.randrange(32, 127)) for _ in range(64)) for _ in range(count)]


async def latency(paths: Paths, count: int, tokens: int = 32) -> dict[str, float]:
    raw, gateway = [], []
    for prompt in prompts(count):
        raw.append(await paths.raw_stream(prompt, tokens))
        gateway.append(await paths.gateway_stream(prompt, tokens))
    assert all(len(times) == tokens for times in raw + gateway)
    figures = {}
    for name, runs in (("raw", raw), ("gateway", gateway)):
        ttft = [times[0] for times in runs]
        itl = [b - a for times in runs for a, b in itertools.pairwise(times)]
        figures |= {f"{name}_ttft_p50_ms": _q(ttft, 50), f"{name}_ttft_p99_ms": _q(ttft, 99),
                    f"{name}_itl_p50_ms": _q(itl, 50), f"{name}_itl_p99_ms": _q(itl, 99)}
    delays = [statistics.median(g[k] for g in gateway) - statistics.median(r[k] for r in raw)
              for k in range(tokens)]
    return figures | {"token_delay_ms": statistics.fmean(delays) * 1e3, "requests": count}


async def closed_loop(call: Callable[[str], Awaitable[None]], lanes: int,
                      seconds: float) -> float:
    done = 0
    texts = prompts(256, seed=1)
    stop_at = time.perf_counter() + seconds

    async def lane(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call(texts[(index + done) % len(texts)])
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(lane(i) for i in range(lanes)))
    return done / (time.perf_counter() - began)


async def streams(stream: Callable[[str, int], Awaitable[list[float]]], count: int,
                  tokens: int) -> dict[str, float]:
    began = time.perf_counter()
    runs = await asyncio.gather(*(stream(p, tokens) for p in prompts(count, seed=2)))
    elapsed = time.perf_counter() - began
    assert all(len(times) == tokens for times in runs)
    return {"seconds": elapsed, "tokens_per_s": count * tokens / elapsed,
            "ttft_p50_ms": _q([t[0] for t in runs], 50)}


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1e3


async def measure(d: Deployment, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    assert d.gateway is not None
    client = AsyncClient(state_dir=d.state, timeout_s=600)
    client.tokenizer = None
    connector = aiohttp.TCPConnector(limit=args.streams + 16)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(d.gateway.url, connector=connector, timeout=timeout) as http:
        paths = Paths(d, client, http)
        before = d.cpu_seconds()
        figures = {"latency": await latency(paths, args.requests)}
        spent = d.cpu_seconds()["gateway"] - before["gateway"]
        figures["latency"] |= {"gateway_cpu_ms_per_request": spent / args.requests * 1e3,
                               "gateway_events_per_request": paths.events / args.requests}
        for name, call in (("raw", paths.raw_whole), ("gateway", paths.gateway_whole)):
            before = d.cpu_seconds()
            rate = await closed_loop(call, args.concurrency, args.seconds)
            figures[f"requests_{name}"] = {"requests_per_s": rate} | _cpu(d, before, args.seconds)
        for name, stream in (("raw", paths.raw_stream), ("gateway", paths.gateway_stream)):
            before, paths.events = d.cpu_seconds(), 0
            result = await streams(stream, args.streams, args.stream_tokens)
            cpu = _cpu(d, before, result["seconds"])
            per_token = cpu.get("cpu_gateway", 0.0) * result["seconds"] / (
                args.streams * args.stream_tokens)
            figures[f"streams_{name}"] = result | cpu | {
                "gateway_cpu_us_per_token": per_token * 1e6,
                "events_per_token": paths.events / (args.streams * args.stream_tokens)}
    await client.close()
    return figures


def detokenize(tokens: int = 2000) -> dict[str, float]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tsslurm.gateway.codec import load_codec
    from tsslurm.gateway.detokenize import ByteTableDecoder, WindowDecoder
    from tsslurm.models.tiny import synthetic_corpus
    from tsslurm.tokenizer import IncrementalDecoder, load_tokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(synthetic_corpus(0), trainers.BpeTrainer(
        vocab_size=2048, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(f"{tmp}/tokenizer.json")
        codec, client_side = load_codec(tmp), load_tokenizer(tmp)
    assert codec.token_bytes is not None and client_side is not None
    ids = random.Random(5).choices(range(3, codec.vocab_size), k=tokens)
    decoders_ = {"byte_table": ByteTableDecoder(codec.token_bytes), "window": WindowDecoder(codec),
                 "whole_list": IncrementalDecoder(client_side)}
    figures = {}
    for name, decoder in decoders_.items():
        began = time.perf_counter()
        text = "".join(decoder.push([t]) for t in ids) + decoder.flush()
        figures[f"{name}_us_per_token"] = (time.perf_counter() - began) / tokens * 1e6
        assert text == codec.decode(ids)
    return figures


def _cpu(d: Deployment, before: dict[str, float], seconds: float) -> dict[str, float]:
    after = d.cpu_seconds()
    return {f"cpu_{name}": (after[name] - before[name]) / seconds for name in after}


def table(figures: dict[str, dict[str, float]]) -> str:
    lat = figures["latency"]
    rows = [("TTFT p50 / p99 (ms)", f"{lat['raw_ttft_p50_ms']:.2f} / {lat['raw_ttft_p99_ms']:.2f}",
             f"{lat['gateway_ttft_p50_ms']:.2f} / {lat['gateway_ttft_p99_ms']:.2f}"),
            ("inter-token p50 / p99 (ms)",
             f"{lat['raw_itl_p50_ms']:.2f} / {lat['raw_itl_p99_ms']:.2f}",
             f"{lat['gateway_itl_p50_ms']:.2f} / {lat['gateway_itl_p99_ms']:.2f}"),
            ("token delay added by the gateway (ms)", "-", f"{lat['token_delay_ms']:.2f}"),
            ("gateway CPU per request of 32 tokens, one event each (ms)", "-",
             f"{lat['gateway_cpu_ms_per_request']:.2f}")]
    raw, gw = figures["requests_raw"], figures["requests_gateway"]
    rows.append(("requests/s, 1 token, closed loop", f"{raw['requests_per_s']:.0f}",
                 f"{gw['requests_per_s']:.0f}"))
    raw, gw = figures["streams_raw"], figures["streams_gateway"]
    rows.append(("streamed tokens/s, concurrent streams", f"{raw['tokens_per_s']:.0f}",
                 f"{gw['tokens_per_s']:.0f}"))
    rows.append(("gateway CPU per streamed token (us), concurrent streams", "-",
                 (f"{gw['gateway_cpu_us_per_token']:.1f} ({gw['events_per_token']:.2f} events "
                 "per token)")))
    text = figures["detokenize"]
    rows.append(("detokenize a 2,000-token answer token by token (us per token)",
                 f"{text['whole_list_us_per_token']:.1f} (whole list)",
                 (f"{text['byte_table_us_per_token']:.2f} (byte table), "
                 f"{text['window_us_per_token']:.1f} (window)")))
    lines = ["| what | raw client | through the gateway |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="latency phase requests")
    parser.add_argument("--seconds", type=float, default=10.0, help="requests/s phase length")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--stream-tokens", type=int, default=256)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with deployment() as d:
        figures = asyncio.run(measure(d, args))
    figures["detokenize"] = detokenize()
    figures["machine"] = {"cores": float(os.cpu_count() or 0), "load_at_start": load,
                          "load_at_end": os.getloadavg()[0]}
    print(json.dumps(figures, indent=1))
    print(table(figures))


if __name__ == "__main__":
    main()

"""500 concurrent streaming requests through one gateway process, with httpx as the HTTP client.
The requests are sent before any worker exists, so all 500 are held by the gateway at once (its
in-flight gauge says so); then a prefiller and two decoders (mock engines) join and stream every
answer concurrently. Every request completes with exactly the mock engine's answer (the mock's
tokens are a pure function of the prompt; the deployment's byte tokenizer makes them text), the
right finish reason and usage, in the OpenAI event format, and the broker's records show the
work."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from gateway_support import StreamedAnswer, metric, read_stream, running_gateway

from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.timeout(240)

STREAMS = 500
TEXT = ByteTokenizer()


def workload(seed: int) -> list[tuple[str, str, int]]:
    """(endpoint, prompt text, max_tokens); one in five is a chat request."""
    rng = random.Random(seed)
    jobs = []
    for i in range(STREAMS):
        prompt = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(5, 200)))
        jobs.append(("chat" if i % 5 == 0 else "completions", prompt, rng.randrange(4, 40)))
    return jobs


def expected_text(endpoint: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    """The mock's answer and the prompt's length in tokens. A chat prompt goes through the
    gateway's fallback template (the mock deployment has none): `user: <content>` then
    `assistant:`."""
    rendered = f"user: {prompt}\nassistant:" if endpoint == "chat" else prompt
    ids = TEXT.encode(rendered)
    return TEXT.decode(mock_continuation(ids, max_tokens)), len(ids)


def body(endpoint: str, model: str, prompt: str, max_tokens: int) -> dict:
    common = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0,
              "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        return {**common, "messages": [{"role": "user", "content": prompt}]}
    return {**common, "prompt": prompt}


def test_500_concurrent_streams_complete_with_the_right_tokens(deployment) -> None:
    d = deployment()
    d.start_broker()
    jobs = workload(seed=3)
    with running_gateway(d) as gateway:
        async def run() -> tuple[float, list[StreamedAnswer]]:
            limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=gateway.url, limits=limits,
                                         timeout=httpx.Timeout(120.0)) as client:
                streams = [asyncio.ensure_future(read_stream(
                    client, f"/v1/{'chat/completions' if e == 'chat' else e}",
                    body(e, gateway.model, p, n), gateway.headers)) for e, p, n in jobs]
                held = await held_at_once(client, gateway.headers)
                await asyncio.to_thread(start_workers, d)
                return held, await asyncio.gather(*streams)

        held, answers = asyncio.run(run())
    assert held == STREAMS, "the gateway held every stream at the same time"
    for (endpoint, prompt, max_tokens), answer in zip(jobs, answers, strict=True):
        text, prompt_tokens = expected_text(endpoint, prompt, max_tokens)
        assert answer.status == 200 and answer.done
        assert answer.text == text
        assert answer.finish_reason == "length"
        assert answer.usage == {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                                "total_tokens": prompt_tokens + max_tokens}
        kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
        assert {chunk["object"] for chunk in answer.chunks} == {kind}
        assert len({chunk["id"] for chunk in answer.chunks}) == 1
    assert len({a.chunks[0]["id"] for a in answers}) == STREAMS, "one id per request"
    records = d.records(STREAMS)
    assert sum(r.outcome == "ok" for r in records) == STREAMS
    assert sum(r.output_tokens for r in records) == sum(n for _, _, n in jobs)
    assert {r.path for r in records} == {"disaggregated"}


async def held_at_once(client: httpx.AsyncClient, headers: dict[str, str],
                       timeout_s: float = 60.0) -> float:
    """The gateway's in-flight gauge once it stops growing at STREAMS (or at the timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = metric((await client.get("/metrics", headers=headers)).text,
                      "tsslurm_gateway_requests_in_flight")
        if held >= STREAMS or loop.time() > deadline:
            return held
        await asyncio.sleep(0.1)


def start_workers(d) -> None:
    d.start_worker("p1", "prefill")
    d.start_worker("d1", "decode")
    d.start_worker("d2", "decode")

"""The gateway with the `openai` package as its client (a client nobody in this project wrote),
against a broker and a mock decoder as processes: completions and chat, streamed and whole, give
exactly the mock engine's answer with usage; stop strings end an answer (and its generation);
/v1/models and /metrics say what was served."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from gateway_support import metric, running_gateway

from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.tokenizer import ByteTokenizer

pytestmark = pytest.mark.timeout(120)

TEXT = ByteTokenizer()
PROMPT = "The tsslurm gateway speaks OpenAI."


def mock_answer(prompt_text: str, max_tokens: int) -> str:
    return TEXT.decode(mock_continuation(TEXT.encode(prompt_text), max_tokens))


def chat_prompt(content: str) -> str:
    """The gateway's fallback chat template (the mock deployment has no template)."""
    return f"user: {content}\nassistant:"


@pytest.fixture
def served(deployment):
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    with running_gateway(d) as gateway:
        yield d, gateway


def test_the_openai_package_gets_the_mock_answers(served) -> None:
    _d, gateway = served
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    whole = client.completions.create(model=gateway.model, prompt=PROMPT, max_tokens=24,
                                      temperature=0)
    assert whole.choices[0].text == mock_answer(PROMPT, 24)
    assert (whole.choices[0].finish_reason, whole.usage.prompt_tokens,
            whole.usage.completion_tokens, whole.usage.total_tokens) \
        == ("length", len(PROMPT), 24, len(PROMPT) + 24)
    assert whole.object == "text_completion" and whole.model == gateway.model

    pieces = list(client.completions.create(model=gateway.model, prompt=PROMPT, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == mock_answer(PROMPT, 24)
    assert pieces[-1].usage.completion_tokens == 24 and not pieces[-1].choices

    messages = [{"role": "user", "content": "Hello there"}]
    chat = client.chat.completions.create(model=gateway.model, messages=messages, max_tokens=16)
    expected = mock_answer(chat_prompt("Hello there"), 16)
    assert chat.choices[0].message.content == expected
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == len(chat_prompt("Hello there"))

    stream = client.chat.completions.create(model=gateway.model, messages=messages,
                                            max_completion_tokens=16, stream=True)
    deltas = list(stream)
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == expected
    assert deltas[-1].choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == [gateway.model]
    assert client.models.retrieve(gateway.model).id == gateway.model


def test_the_async_openai_client_streams_concurrently(served) -> None:
    _d, gateway = served

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key,
                                    max_retries=0)
        async def one(i: int) -> str:
            stream = await client.completions.create(model=gateway.model, prompt=f"{i} {PROMPT}",
                                                     max_tokens=20, stream=True)
            return "".join([chunk.choices[0].text async for chunk in stream])
        try:
            return await asyncio.gather(*(one(i) for i in range(40)))
        finally:
            await client.close()

    assert asyncio.run(run()) == [mock_answer(f"{i} {PROMPT}", 20) for i in range(40)]


def test_stop_strings_end_the_answer_and_its_generation(served) -> None:
    d, gateway = served
    full = mock_answer(PROMPT, 200)
    stop = full[60:63]
    expected = full[:full.index(stop)]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    whole = client.completions.create(model=gateway.model, prompt=PROMPT, max_tokens=200,
                                      stop=[stop, "never appears"])
    streamed = list(client.completions.create(model=gateway.model, prompt=PROMPT, max_tokens=200,
                                              stop=stop, stream=True))
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens < 200
    records = d.records(2)
    assert [r.outcome for r in records] == ["cancelled", "cancelled"], \
        "the generation stopped with the answer"
    assert all(len(expected) <= r.output_tokens < 200 for r in records)


def test_metrics_count_requests_and_tokens(served) -> None:
    _d, gateway = served
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    for _ in range(3):
        client.completions.create(model=gateway.model, prompt=PROMPT, max_tokens=5)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt=PROMPT, max_tokens=5)
    text = httpx.get(gateway.url + "/metrics", headers=gateway.headers).text
    assert 'tsslurm_gateway_requests_total{endpoint="/v1/completions",status="200"} 3.0' in text
    assert 'tsslurm_gateway_requests_total{endpoint="/v1/completions",status="404"} 1.0' in text
    assert metric(text, "tsslurm_gateway_completion_tokens_total") == 15
    assert metric(text, "tsslurm_gateway_prompt_tokens_total") == 3 * len(PROMPT)
    assert metric(text, "tsslurm_gateway_requests_in_flight") == 0

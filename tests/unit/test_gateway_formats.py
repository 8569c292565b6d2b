"""The gateway's pure parts: OpenAI request bodies to Jobs (defaults, limits, refusals), the
response and event formats, the error mapping, chat templates, API key files, and the health
check's reasoning."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tsslurm.gateway import errors, responses
from tsslurm.gateway.chat import FALLBACK_TEMPLATE, ChatTemplate, TemplateError, load_chat_template
from tsslurm.gateway.errors import ApiError
from tsslurm.gateway.health import HealthCheck, ProbeFailed
from tsslurm.gateway.keys import KeyChecker, KeyFileError, create_key, keys_file, read_digests
from tsslurm.gateway.requests import (
    ChatBody,
    CompletionBody,
    Limits,
    chat_job,
    chat_messages,
    check_model,
    completion_job,
    completion_prompt,
    decode_body,
)
from tsslurm.models.tiny import CHAT_TEMPLATE
from tsslurm.protocol import Sampling

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(model="m", context_tokens=100, vocab_size=256)


def completion(**fields: object) -> CompletionBody:
    return decode_body(json.dumps({"model": "m", "prompt": "hi", **fields}).encode(),
                       CompletionBody)


def chat(**fields: object) -> ChatBody:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return decode_body(json.dumps(body).encode(), ChatBody)


def refused(action, status: int = 400) -> ApiError:
    with pytest.raises(ApiError) as caught:
        action()
    assert caught.value.status == status
    return caught.value


def test_defaults_follow_the_openai_api() -> None:
    job = completion_job(completion(), [1, 2, 3], LIMITS)
    assert (job.max_tokens, job.sampling, job.stop, job.stream, job.include_usage) \
        == (16, Sampling(temperature=1.0, top_p=1.0), (), False, False)
    assert chat_job(chat(), [1] * 30, LIMITS).max_tokens == 70, "chat: the rest of the context"
    assert completion_job(completion(), [1] * 90, LIMITS).max_tokens == 10


def test_parameters_map_to_sampling() -> None:
    job = chat_job(chat(temperature=0, top_p=0.5, top_k=5, seed=7, stop="\n", max_tokens=9,
                        max_completion_tokens=4, ignore_eos=True, stop_token_ids=[2],
                        stream=True, stream_options={"include_usage": True}), [1], LIMITS)
    assert job.sampling == Sampling(temperature=0.0, top_p=0.5, top_k=5, seed=7,
                                    stop_token_ids=[2], ignore_eos=True)
    assert (job.max_tokens, job.stop, job.stream, job.include_usage) == (4, ("\n",), True, True)
    assert completion_job(completion(top_k=-1), [1], LIMITS).sampling.top_k == 0


def test_prompts_text_ids_or_a_list_of_one() -> None:
    assert completion_prompt(completion(prompt=["one"])) == "one"
    assert completion_prompt(completion(prompt=[5, 6])) == [5, 6]
    assert completion_prompt(completion(prompt=[[5, 6]])) == [5, 6]
    assert refused(lambda: completion_prompt(completion(prompt=["a", "b"]))).param == "prompt"
    for bad in ("", [], [1.5], {"a": 1}, None):
        refused(lambda bad=bad: completion_prompt(completion(prompt=bad)))


def test_refusals_name_the_parameter() -> None:
    cases = {"n": completion(n=2), "logprobs": completion(logprobs=1),
             "echo": completion(echo=True), "suffix": completion(suffix="x"),
             "best_of": completion(best_of=3), "presence_penalty": completion(presence_penalty=1),
             "logit_bias": completion(logit_bias={"5": 1.0}),
             "temperature": completion(temperature=2.5), "top_p": completion(top_p=0),
             "stop": completion(stop=["ok", ""])}
    for param, body in cases.items():
        assert refused(lambda b=body: completion_job(b, [1], LIMITS)).param == param
    for param, body in {"tools": chat(tools=[{"type": "function"}]),
                        "response_format": chat(response_format={"type": "json_object"}),
                        "logprobs": chat(logprobs=True)}.items():
        assert refused(lambda b=body: chat_job(b, [1], LIMITS)).param == param
    assert chat_job(chat(response_format={"type": "text"}, tool_choice="none"), [1], LIMITS)


def test_lengths_against_the_context() -> None:
    error = refused(lambda: completion_job(completion(max_tokens=60), [1] * 50, LIMITS))
    assert (error.code, error.param) == ("context_length_exceeded", "max_tokens")
    assert "maximum context length is 100 tokens" in error.message and "110 tokens" in error.message
    assert refused(lambda: chat_job(chat(), [1] * 100, LIMITS)).code == "context_length_exceeded"
    assert refused(lambda: completion_job(completion(max_tokens=0), [1], LIMITS)).param \
        == "max_tokens"
    assert refused(lambda: completion_job(completion(), [300], LIMITS)).param == "prompt"


def test_bodies_that_do_not_decode() -> None:
    assert "not valid JSON" in refused(lambda: decode_body(b"{", CompletionBody)).message
    assert "no body" in refused(lambda: decode_body(b"", CompletionBody)).message
    assert refused(lambda: decode_body(b'{"prompt": "x"}', CompletionBody)).message.startswith(
        "invalid request: Object missing required field `model`")
    wrong = refused(lambda: decode_body(b'{"model": "m", "messages": [{"role": 1}]}', ChatBody))
    assert wrong.param == "messages[0].role"
    assert refused(lambda: check_model(completion(model="x"), LIMITS), 404).code \
        == "model_not_found"


def test_chat_messages_and_content_parts() -> None:
    body = chat(messages=[{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}],
                           "name": "ann"}])
    assert chat_messages(body) == [{"role": "system", "content": "be brief"},
                                   {"role": "user", "content": "ab", "name": "ann"}]
    image = chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}])
    assert refused(lambda: chat_messages(image)).param == "messages[0].content"
    assert refused(lambda: chat_messages(chat(messages=[]))).param == "messages"


def test_stream_events_in_the_openai_format() -> None:
    form = responses.StreamFormat("chatcmpl-1", "m", chat=True, include_usage=True)
    events = [form.opening(), form.text('quote " and \u00e9'),
              form.closing("stop", responses.Usage(3, 2))]
    lines = [line for event in events for line in event.decode().split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == \
        [{"role": "assistant", "content": ""}, {"content": 'quote " and \u00e9'}, {}, None]
    assert [c["usage"] for c in chunks] == [None, None, None,
                                           {"prompt_tokens": 3, "completion_tokens": 2,
                                            "total_tokens": 5}]
    assert {(c["id"], c["object"], c["model"]) for c in chunks} == \
        {("chatcmpl-1", "chat.completion.chunk", "m")}
    plain = responses.StreamFormat("cmpl-1", "m", chat=False, include_usage=False)
    assert plain.opening() is None
    chunk = json.loads(plain.text("x").decode().removeprefix("data: "))
    assert chunk["choices"] == [{"index": 0, "text": "x", "logprobs": None,
                                 "finish_reason": None}] and "usage" not in chunk
    assert plain.closing("length", responses.Usage(1, 1)).endswith(b"data: [DONE]\n\n")


def test_broker_errors_map_to_statuses() -> None:
    expected = {"bad_request": (400, None), "too_long": (400, "context_length_exceeded"),
                "unknown_model": (404, "model_not_found"), "overloaded": (429, "overloaded"),
                "unavailable": (503, "service_unavailable"), "timeout": (504, "timeout"),
                "internal": (500, "internal_error"), "protocol": (500, "internal_error")}
    for code, (status, api_code) in expected.items():
        error = errors.from_broker(code, "why")
        assert (error.status, error.code) == (status, api_code)
    assert errors.from_broker("overloaded", "x").headers() == {"retry-after": "1"}
    assert errors.from_broker("unavailable", "x").headers() == {"retry-after": "5"}
    assert errors.from_broker("timeout", "x").headers() == {}


def test_client_exceptions_map_to_statuses() -> None:
    from tsslurm.client import BrokerUnavailable, RequestError, RequestTimeout
    from tsslurm.statedir import StateDirError

    assert errors.from_exception(RequestError("too_long", "long")).status == 400
    assert errors.from_exception(RequestTimeout("slow")).status == 504
    assert errors.from_exception(BrokerUnavailable("gone")).status == 503
    assert errors.from_exception(StateDirError("no connection file")).status == 503
    assert errors.from_exception(KeyError("bug")).status == 500


def test_chat_templates_render_like_transformers(tmp_path: Path) -> None:
    template = ChatTemplate(CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert template.render(messages) == "<s>system: s\nuser: u\nassistant:"
    assert template.render(messages, add_generation_prompt=False) == "<s>system: s\nuser: u\n"
    (tmp_path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    loaded = load_chat_template(tmp_path)
    assert loaded.render(messages) == template.render(messages)
    assert loaded.origin.endswith("chat_template.jinja")


def test_chat_template_sources_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"},
                           {"name": "default", "template": "{{ messages[0]['content'] }}!"}]}))
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "x"}]) == "x!"
    assert load_chat_template(None).origin == "fallback"
    assert load_chat_template(tmp_path / "missing").render([{"role": "user", "content": "x"}]) \
        == ChatTemplate(FALLBACK_TEMPLATE).render([{"role": "user", "content": "x"}])
    strict = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first "
                          "must be user') }}{% endif %}ok")
    with pytest.raises(TemplateError, match="first must be user"):
        strict.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")
    sandboxed = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        sandboxed.render([])


def test_key_files(tmp_path: Path) -> None:
    key = create_key(tmp_path, "alice")
    file = keys_file(tmp_path)
    assert key.startswith("tss-") and key not in file.read_text(), "only a digest is stored"
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    assert set(read_digests(file)) == {"alice"}
    with pytest.raises(KeyFileError, match="exists already"):
        create_key(tmp_path, "alice")
    with pytest.raises(KeyFileError, match="key name"):
        create_key(tmp_path, "bad name")
    checker = KeyChecker(file, recheck_s=0.0)
    bob = create_key(tmp_path, "bob")
    assert checker.allows(key) and checker.allows(bob) and not checker.allows("tss-other")
    file.write_text(file.read_text() + "broken line\n")
    assert not checker.allows(key) and "line" in (checker.problem or "")


def test_health_uses_served_requests_then_one_shared_probe() -> None:
    now = [100.0]
    probes: list[int] = []

    async def probe() -> None:
        probes.append(1)
        await asyncio.sleep(0.01)

    async def run() -> None:
        health = HealthCheck(probe, fresh_s=10, reuse_s=1, clock=lambda: now[0])
        health.served()
        assert (await health.check()).ok and probes == []
        now[0] += 11
        reports = await asyncio.gather(*(health.check() for _ in range(5)))
        assert all(r.ok for r in reports) and probes == [1], "one probe for concurrent checks"
        health.served()
        health.failed()
        assert (await health.check()).ok and probes == [1, 1], "a failure forgets the evidence"

    asyncio.run(run())


def test_health_failures_say_which_part_failed() -> None:
    async def check(reached: bool):
        async def probe() -> None:
            raise ProbeFailed("no answer", broker_reached=reached)
        return await HealthCheck(probe).check()

    down = asyncio.run(check(False))
    busy = asyncio.run(check(True))
    assert (down.ok, down.broker, busy.ok, busy.broker) == (False, "unreachable", False,
                                                            "reachable")
    assert down.body()["status"] == "unavailable" and busy.body()["detail"] == "no answer"

"""OpenAI request bodies (`/v1/completions`, `/v1/chat/completions`): decoded with typed msgspec
Structs, checked, and turned into what the broker is asked: a Job. Parameters tsslurm cannot
honour (n > 1, logprobs, penalties, tools, ...) are refused with a 400 naming them rather than
ignored; unknown fields are ignored, as the OpenAI API does. vLLM's extensions `top_k`,
`ignore_eos` and `stop_token_ids` are accepted. Pure: no I/O.

Defaults follow the OpenAI API: temperature 1, top_p 1, max_tokens 16 for completions and
"the rest of the context" for chat."""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

import msgspec

from tsslurm.gateway.errors import bad_request, context_exceeded, unknown_model
from tsslurm.protocol import Sampling

MAX_STOPS = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
T = TypeVar("T")


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Common(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionBody(_Common, kw_only=True):
    prompt: Any
    """A string, a list of token ids, or a list of one of either (one prompt per request)."""
    best_of: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None


class Message(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatBody(_Common, kw_only=True):
    messages: list[Message]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class Job(NamedTuple):
    """One generation the gateway asks of the broker."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


class Limits(NamedTuple):
    model: str
    context_tokens: int
    vocab_size: int


def decode_body(data: bytes, kind: type[T]) -> T:
    if not data:
        raise bad_request("the request has no body: send a JSON object")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as error:
        raise bad_request(f"invalid request: {error}", param=_param_of(str(error))) from None
    except msgspec.DecodeError as error:
        raise bad_request(f"the body is not valid JSON: {error}") from None


def check_model(body: _Common, limits: Limits) -> None:
    if body.model != limits.model:
        raise unknown_model(body.model, limits.model)


def check_text_length(text: str, limits: Limits, param: str = "prompt") -> None:
    """Text far beyond the context is refused before it is tokenized (the broker's rule: no
    tokenizer packs 64 characters into each token of a text)."""
    if len(text) > 64 * limits.context_tokens:
        raise bad_request(f"the {param} ({len(text)} characters) is far longer than the model "
                          f"context of {limits.context_tokens} tokens", param=param,
                          code="context_length_exceeded")


def completion_prompt(body: CompletionBody) -> str | list[int]:
    prompt = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("the prompt is empty", param="prompt")
        return prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise bad_request("one prompt per request: send the others in their own requests",
                          param="prompt")
    raise bad_request("prompt must be a non-empty string or a list of token ids", param="prompt")


def chat_messages(body: ChatBody) -> list[dict[str, Any]]:
    if not body.messages:
        raise bad_request("messages must hold at least one message", param="messages")
    return [_message(m, i) for i, m in enumerate(body.messages)]


def completion_job(body: CompletionBody, prompt_ids: list[int], limits: Limits) -> Job:
    _refuse(body, {"best_of": body.best_of not in (None, 1), "echo": bool(body.echo),
                   "logprobs": body.logprobs is not None, "suffix": body.suffix is not None})
    return _job(body, prompt_ids, body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, limits)


def chat_job(body: ChatBody, prompt_ids: list[int], limits: Limits) -> Job:
    _refuse(body, {"logprobs": bool(body.logprobs), "top_logprobs": body.top_logprobs is not None,
                   "tools": bool(body.tools) or bool(body.functions),
                   "tool_choice": body.tool_choice not in (None, "none"),
                   "response_format": (body.response_format or {}).get("type", "text") != "text"})
    wanted = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    return _job(body, prompt_ids, wanted, None, limits)


def check_prompt_ids(prompt_ids: list[int], limits: Limits) -> None:
    if not prompt_ids:
        raise bad_request("the prompt is empty", param="prompt")
    if any(not 0 <= t < limits.vocab_size for t in prompt_ids):
        raise bad_request(f"prompt token ids must be in [0, {limits.vocab_size})", param="prompt")


def _job(body: _Common, prompt_ids: list[int], wanted: int | None, default: int | None,
         limits: Limits) -> Job:
    check_prompt_ids(prompt_ids, limits)
    max_tokens = _max_tokens(wanted, default, len(prompt_ids), limits.context_tokens)
    stream = bool(body.stream)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return Job(prompt_ids, max_tokens, _sampling(body, limits), _stops(body.stop), stream,
               include_usage)


def _max_tokens(wanted: int | None, default: int | None, prompt: int, context: int) -> int:
    if wanted is not None and wanted < 1:
        raise bad_request(f"max_tokens must be at least 1, got {wanted}", param="max_tokens")
    room = context - prompt
    chosen = wanted if wanted is not None else (min(default, room) if default else room)
    if chosen < 1 or prompt + chosen > context:
        raise context_exceeded(context, prompt, max(chosen, 0) if wanted is not None else 0)
    return chosen


def _sampling(body: _Common, limits: Limits) -> Sampling:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0.0 <= temperature <= 2.0:
        raise bad_request(f"temperature must be in [0, 2], got {temperature}", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", param="top_p")
    top_k = body.top_k or 0
    if top_k < -1:
        raise bad_request(f"top_k must be -1, 0 (off) or positive, got {top_k}", param="top_k")
    if body.seed is not None and not -(1 << 63) <= body.seed < 1 << 63:
        raise bad_request("seed must fit in 64 bits", param="seed")
    stop_ids = body.stop_token_ids or []
    if any(not 0 <= t < limits.vocab_size for t in stop_ids):
        raise bad_request(f"stop_token_ids must be in [0, {limits.vocab_size})",
                          param="stop_token_ids")
    return Sampling(temperature=temperature, top_p=top_p, top_k=max(top_k, 0), seed=body.seed,
                    stop_token_ids=list(stop_ids), ignore_eos=body.ignore_eos)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", param="stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"at most {MAX_STOPS} stop strings", param="stop")
    return stops


def _refuse(body: _Common, specific: dict[str, bool]) -> None:
    if body.n not in (None, 1):
        raise bad_request(f"n={body.n}: this deployment returns one choice per request (n=1); "
                          "send several requests instead", param="n")
    unsupported = {**specific, "presence_penalty": bool(body.presence_penalty),
                   "frequency_penalty": bool(body.frequency_penalty),
                   "logit_bias": bool(body.logit_bias)}
    for name, used in unsupported.items():
        if used:
            raise bad_request(f"{name} is not supported by this deployment", param=name,
                              code="unsupported_parameter")


def _message(message: Message, index: int) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        if any(part.type != "text" or part.text is None for part in content):
            raise bad_request(f"messages[{index}]: only text content parts are supported",
                              param=f"messages[{index}].content")
        content = "".join(part.text or "" for part in content)
    out: dict[str, Any] = {"role": message.role, "content": content or ""}
    if message.name is not None:
        out["name"] = message.name
    return out


def _param_of(message: str) -> str | None:
    """`$.messages[0].role` in msgspec's message -> `messages[0].role`."""
    marker = "at `$."
    at = message.rfind(marker)
    return message[at + len(marker):].rstrip("`") if at >= 0 else None


"""What a request must satisfy before the broker accepts it. Each check returns None or an
(error code, message) pair the client gets as an ErrorReply. Pure: no I/O, no clock."""

from __future__ import annotations

from typing import NamedTuple

from tsslurm.protocol import GenerateRequest, Sampling

MAX_REQUEST_ID = 128

Rejection = tuple[str, str]


class Limits(NamedTuple):
    model: str
    max_context_tokens: int


def check_request(request: GenerateRequest, limits: Limits) -> Rejection | None:
    """Everything checkable before the prompt is tokenized."""
    for check in (_check_id, _check_max_tokens, _check_model, _check_deadline, _check_resume,
                  _check_prompt_form):
        rejection = check(request, limits)
        if rejection is not None:
            return rejection
    return check_sampling(request.sampling)


def check_length(prompt_tokens: int, max_tokens: int, limits: Limits) -> Rejection | None:
    """The prompt and its answer must fit the model's context."""
    if prompt_tokens + max_tokens > limits.max_context_tokens:
        return "too_long", (f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} exceeds "
                            f"the model context of {limits.max_context_tokens} tokens")
    return None


def check_token_ids(token_ids: list[int]) -> Rejection | None:
    """Ids from the wire were range-checked while decoding (protocol.TokenId); this is for ids
    that did not come from the wire (a tokenizer's output, a request built in-process)."""
    if not token_ids:
        return "bad_request", "the prompt is empty"
    return None


def check_sampling(sampling: Sampling) -> Rejection | None:
    if not 0.0 <= sampling.temperature <= 100.0:
        return "bad_request", f"temperature must be in [0, 100], got {sampling.temperature}"
    if not 0.0 < sampling.top_p <= 1.0:
        return "bad_request", f"top_p must be in (0, 1], got {sampling.top_p}"
    if sampling.top_k < 0:
        return "bad_request", f"top_k must be >= 0, got {sampling.top_k}"
    return None


def _check_id(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if not request.request_id or len(request.request_id) > MAX_REQUEST_ID:
        return "bad_request", f"request_id must be 1 to {MAX_REQUEST_ID} characters"
    return None


def _check_prompt_form(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if (request.prompt is None) == (request.prompt_token_ids is None):
        return "bad_request", "give exactly one of prompt (text) and prompt_token_ids"
    if request.prompt is not None:
        if not request.prompt:
            return "bad_request", "the prompt is empty"
        if len(request.prompt) > 64 * limits.max_context_tokens:
            return "too_long", "the prompt text is far longer than the model context"
        return None
    assert request.prompt_token_ids is not None
    return (check_token_ids(request.prompt_token_ids)
            or check_length(len(request.prompt_token_ids), request.max_tokens, limits))


def _check_max_tokens(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if request.max_tokens < 1:
        return "bad_request", f"max_tokens must be >= 1, got {request.max_tokens}"
    if request.max_tokens >= limits.max_context_tokens:
        return "bad_request", (f"max_tokens {request.max_tokens} cannot fit the model context of "
                               f"{limits.max_context_tokens} tokens")
    return None


def _check_model(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if request.model is not None and request.model != limits.model:
        return "unknown_model", f"this deployment serves {limits.model!r}, not {request.model!r}"
    return None


def _check_deadline(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if request.deadline_s is not None and not 0 < request.deadline_s <= 7 * 86400:
        return "bad_request", f"deadline_s must be in (0, 604800], got {request.deadline_s}"
    return None


def _check_resume(request: GenerateRequest, limits: Limits) -> Rejection | None:
    if request.resume_from < 0:
        return "bad_request", f"resume_from must be >= 0, got {request.resume_from}"
    return None

"""Request admission (tsslurm/broker/admission.py): each kind of bad request gets its error code
and a message that says what to change; good requests pass."""

from __future__ import annotations

import pytest

from tsslurm.broker.admission import Limits, check_length, check_request
from tsslurm.protocol import GenerateRequest, Sampling

pytestmark = pytest.mark.timeout(30)

LIMITS = Limits(model="mock-llama", max_context_tokens=100)


def request(**fields: object) -> GenerateRequest:
    base: dict[str, object] = {"request_id": "r", "max_tokens": 10, "prompt_token_ids": [1, 2]}
    base.update(fields)
    return GenerateRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [
    request(), request(prompt="hi", prompt_token_ids=None), request(model="mock-llama"),
    request(prompt_token_ids=[0] * 90, max_tokens=10), request(deadline_s=1.0),
    request(sampling=Sampling(temperature=1.0, top_p=0.5, top_k=3)),
])
def test_good_requests_pass(good: GenerateRequest) -> None:
    assert check_request(good, LIMITS) is None


@pytest.mark.parametrize(("bad", "code", "words"), [
    (request(max_tokens=0), "bad_request", "max_tokens must be >= 1"),
    (request(max_tokens=-5), "bad_request", "max_tokens must be >= 1"),
    (request(max_tokens=10**12), "bad_request", "cannot fit the model context"),
    (request(prompt_token_ids=[]), "bad_request", "empty"),
    (request(prompt=""), "bad_request", "exactly one"),
    (request(prompt=None, prompt_token_ids=None), "bad_request", "exactly one"),
    (request(prompt="", prompt_token_ids=None), "bad_request", "empty"),
    (request(prompt_token_ids=[0] * 95), "too_long", "exceeds the model context of 100"),
    (request(prompt_token_ids=[0] * 500), "too_long", "exceeds the model context"),
    (request(prompt="x" * 10_000, prompt_token_ids=None), "too_long", "longer than"),
    (request(model="gpt-5"), "unknown_model", "serves 'mock-llama'"),
    (request(request_id=""), "bad_request", "request_id"),
    (request(request_id="x" * 200), "bad_request", "request_id"),
    (request(deadline_s=-1.0), "bad_request", "deadline_s"),
    (request(resume_from=-1), "bad_request", "resume_from"),
    (request(sampling=Sampling(temperature=-1.0)), "bad_request", "temperature"),
    (request(sampling=Sampling(top_p=0.0)), "bad_request", "top_p"),
    (request(sampling=Sampling(top_k=-2)), "bad_request", "top_k"),
])
def test_bad_requests_get_their_code(bad: GenerateRequest, code: str, words: str) -> None:
    rejection = check_request(bad, LIMITS)
    assert rejection is not None
    assert rejection[0] == code
    assert words in rejection[1]


def test_length_after_tokenization() -> None:
    assert check_length(90, 10, LIMITS) is None
    assert check_length(91, 10, LIMITS) == (
        "too_long", "prompt of 91 tokens + max_tokens 10 exceeds the model context of 100 tokens")

"""Errors as the OpenAI API returns them: `{"error": {"message", "type", "param", "code"}}` with
the HTTP status a client library acts on, and the mapping from the broker's error codes
(protocol.ErrorReply) and the client library's exceptions. Pure: no I/O.

Statuses chosen where the API leaves a choice:
- the broker's queue is full (`overloaded`) or the gateway holds its maximum of requests: 429 with
  Retry-After. The deployment is up but busy with other requests: the caller should slow down,
  which is what 429 tells OpenAI clients (they back off and retry), and it keeps "busy" apart from
  "down" (503) on dashboards.
- the broker unreachable, or it failed the request on every worker it tried: 503 with Retry-After.
- the request's deadline passed (the broker's or the client's): 504. The gateway waited for the
  service behind it, which did not answer in time; 408 would say the HTTP client was too slow
  sending its request, which is not what happened.
"""

from __future__ import annotations

from typing import Any

import msgspec

RETRY_BUSY_S = 1
RETRY_DOWN_S = 5


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def json(self) -> bytes:
        return msgspec.json.encode(self.body())

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"retry-after": str(self.retry_after_s)}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


def unknown_model(requested: str, served: str) -> ApiError:
    return ApiError(404, f"The model `{requested}` does not exist: this deployment serves "
                         f"`{served}`", param="model", code="model_not_found")


def context_exceeded(context: int, prompt: int, completion: int) -> ApiError:
    return bad_request(
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the prompt, {completion} for the "
        "completion). Please reduce the length of the prompt or of the completion.",
        param="max_tokens" if completion else "messages", code="context_length_exceeded")


def busy(message: str) -> ApiError:
    return ApiError(429, message, kind="rate_limit_error", code="overloaded",
                    retry_after_s=RETRY_BUSY_S)


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, kind="server_error", code="service_unavailable",
                    retry_after_s=RETRY_DOWN_S)


def timed_out(message: str) -> ApiError:
    return ApiError(504, message, kind="server_error", code="timeout")


def not_found(path: str) -> ApiError:
    return ApiError(404, f"no endpoint {path}: this gateway serves /v1/completions, "
                         "/v1/chat/completions, /v1/models, /health and /metrics",
                    code="not_found")


def internal(message: str) -> ApiError:
    return ApiError(500, message, kind="server_error", code="internal_error")


def from_broker(code: str, message: str) -> ApiError:
    """A protocol ErrorReply code (the broker failed or refused the request)."""
    if code == "bad_request":
        return bad_request(message)
    if code == "too_long":
        return bad_request(message, code="context_length_exceeded")
    if code == "unknown_model":
        return ApiError(404, message, param="model", code="model_not_found")
    if code == "overloaded":
        return busy(message)
    if code == "unavailable":
        return unavailable(message)
    if code == "timeout":
        return timed_out(message)
    return internal(f"{code}: {message}")


def from_exception(error: Exception) -> ApiError:
    """The client library's exceptions (and a state directory gone with its broker)."""
    from tsslurm.client import BrokerUnavailable, RequestError, RequestTimeout
    from tsslurm.statedir import StateDirError

    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestError):
        return from_broker(error.code, str(error).split(": ", 1)[-1])
    if isinstance(error, RequestTimeout):
        return timed_out(str(error))
    if isinstance(error, (BrokerUnavailable, StateDirError)):
        return unavailable(f"the broker is not reachable: {error}")
    return internal(f"internal error: {type(error).__name__}: {error}")

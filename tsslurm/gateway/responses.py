"""OpenAI response bodies and server-sent events, byte for byte in the API's format. A stream's
per-token work is one JSON string encoding between a precomputed head and tail. Pure: no I/O.

A stream is: chunks (`data: {...}\\n\\n`), the last with its finish_reason; with
`stream_options.include_usage` every chunk carries `"usage": null` and one more chunk with empty
`choices` carries the usage; then `data: [DONE]`. A chat stream's first chunk carries the role."""

from __future__ import annotations

import time
import uuid
from typing import Any, NamedTuple

import msgspec

_json = msgspec.json.encode
DONE = b"data: [DONE]\n\n"


class Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int

    def body(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def completion(request_id: str, model: str, text: str, finish_reason: str,
               usage: Usage) -> bytes:
    return _json({"id": request_id, "object": "text_completion", "created": int(time.time()),
                  "model": model,
                  "choices": [{"index": 0, "text": text, "logprobs": None,
                               "finish_reason": finish_reason}],
                  "usage": usage.body()})


def chat_completion(request_id: str, model: str, text: str, finish_reason: str,
                    usage: Usage) -> bytes:
    return _json({"id": request_id, "object": "chat.completion", "created": int(time.time()),
                  "model": model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                               "logprobs": None, "finish_reason": finish_reason}],
                  "usage": usage.body()})


def models(model: str, created: int, context_tokens: int) -> bytes:
    return _json({"object": "list", "data": [model_card(model, created, context_tokens)]})


def model_card(model: str, created: int, context_tokens: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "tsslurm",
            "max_model_len": context_tokens}


class StreamFormat:
    """The events of one streamed answer."""

    def __init__(self, request_id: str, model: str, chat: bool, include_usage: bool):
        self.chat = chat
        self.include_usage = include_usage
        self._envelope = {"id": request_id,
                          "object": "chat.completion.chunk" if chat else "text_completion",
                          "created": int(time.time()), "model": model}
        head = _json(self._envelope)[:-1]
        self._head = b"data: " + head + (b',"choices":[{"index":0,"delta":{"content":' if chat
                                        else b',"choices":[{"index":0,"text":')
        usage = b',"usage":null' if include_usage else b""
        self._tail = (b'},' if chat else b',') + b'"logprobs":null,"finish_reason":null}]' \
            + usage + b"}\n\n"

    def text(self, piece: str) -> bytes:
        return self._head + _json(piece) + self._tail

    def opening(self) -> bytes | None:
        """A chat stream's first chunk: the assistant's role, no content yet."""
        if not self.chat:
            return None
        return self._chunk({"role": "assistant", "content": ""}, None)

    def closing(self, finish_reason: str, usage: Usage) -> bytes:
        """The last chunk, the usage chunk when asked for, and [DONE]."""
        last = self._chunk({} if self.chat else "", finish_reason)
        if not self.include_usage:
            return last + DONE
        summary = _event({**self._envelope, "choices": [], "usage": usage.body()})
        return last + summary + DONE

    def _chunk(self, delta: dict[str, str] | str, finish_reason: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        choice.update({"delta": delta} if self.chat else {"text": delta})
        choice.update(logprobs=None, finish_reason=finish_reason)
        body: dict[str, Any] = {**self._envelope, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return _event(body)


def error_event(error: dict[str, Any]) -> bytes:
    """An error after the stream began (its status line is already sent), then [DONE]."""
    return _event(error) + DONE


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + _json(body) + b"\n\n"

"""Bad requests against a live broker get the right error code, as an ErrorReply to that client,
and the broker keeps serving: invalid fields, prompts beyond the context, an unknown model, wrong
protocol version, unknown or misdirected commands, oversized messages; plus cancel and
deadlines."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest
import zmq

from tsslurm.client import RequestError, RequestTimeout
from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.protocol import (
    HEADER,
    Cancel,
    Command,
    ErrorReply,
    GenerateRequest,
    WorkerStats,
    decode,
    encode,
)

pytestmark = pytest.mark.timeout(90)

_ids = itertools.count()
SMALL_MESSAGES = {"size": "request_timeout_s: 120=>request_timeout_s: 120\n  "
                          "max_message_bytes: 65536"}


@pytest.fixture
def served(deployment):
    d = deployment(**SMALL_MESSAGES)
    d.start_broker()
    d.start_worker("d1", "decode")
    return d


def _submit(**fields: object) -> list[bytes]:
    base: dict[str, object] = {"request_id": f"bad-{next(_ids)}", "max_tokens": 5,
                               "prompt_token_ids": [65]}
    base.update(fields)
    return encode(Command.SUBMIT, GenerateRequest(**base))  # type: ignore[arg-type]


CASES = [
    ("negative max_tokens", _submit(max_tokens=-3), "bad_request", "max_tokens must be >= 1"),
    ("zero max_tokens", _submit(max_tokens=0), "bad_request", "max_tokens must be >= 1"),
    ("absurd max_tokens", _submit(max_tokens=2**62), "bad_request", "cannot fit"),
    ("prompt beyond the context", _submit(prompt_token_ids=[66] * 5000), "too_long",
     "model context of 4096"),
    ("prompt + answer beyond the context", _submit(prompt_token_ids=[66] * 4000, max_tokens=200),
     "too_long", "exceeds the model context"),
    ("text beyond the context", _submit(prompt_token_ids=None, prompt="x" * 5000), "too_long",
     "exceeds the model context"),
    ("unknown model", _submit(model="llama-9000"), "unknown_model", "serves 'mock-llama'"),
    ("empty prompt", _submit(prompt_token_ids=[]), "bad_request", "empty"),
    ("no prompt", _submit(prompt_token_ids=None), "bad_request", "exactly one"),
    ("negative token id", _submit(prompt_token_ids=[1, -4]), "bad_request",
     "bad SUBMIT body: Expected `int` >= 0"),
    ("wrong protocol version", [b"TSS/9", Command.SUBMIT.value, b"\x80"], "protocol",
     "unsupported protocol header"),
    ("unknown command", [HEADER, b"\x42", b"\x80"], "protocol", "unknown command"),
    ("worker command on the client socket", encode(Command.HEARTBEAT, WorkerStats()), "protocol",
     "not a client command"),
    ("wrong body type", [HEADER, Command.SUBMIT.value, msgspec.msgpack.encode({"max_tokens": "x"})],
     "bad_request", "bad SUBMIT body"),
    ("too many frames", [HEADER, Command.SUBMIT.value, b"", b""], "protocol", "expected 3 frames"),
    ("oversized", _submit(prompt_token_ids=[200] * 40_000), "protocol", "exceeds the limit"),
]


def test_each_bad_request_gets_its_error_code(served) -> None:
    context = zmq.Context()
    try:
        socket = served.raw_socket(context)
        for name, frames, code, words in CASES:
            socket.send_multipart(frames)
            assert socket.poll(5000), f"{name}: no answer"
            command, reply = decode(socket.recv_multipart())
            assert command is Command.ERROR, name
            assert isinstance(reply, ErrorReply)
            assert (reply.code, words in reply.message) == (code, True), (name, reply)
            if len(frames) == 3 and frames[:2] == [HEADER, Command.SUBMIT.value] \
                    and name != "wrong body type":
                sent = msgspec.msgpack.decode(frames[2])["request_id"]
                assert reply.request_id == sent, f"{name}: the error names the request"
    finally:
        context.destroy(linger=0)
    assert served.processes["broker"].poll() is None
    with served.sync_client(timeout_s=20) as client:
        assert client.generate([65], max_tokens=4).token_ids == mock_continuation([65], 4)


def test_the_client_library_raises_request_errors_with_the_code(served) -> None:
    with served.sync_client(timeout_s=20) as client, pytest.raises(RequestError) as caught:
        client.generate([65] * 5000, max_tokens=4)
    assert caught.value.code == "too_long" and "model context of 4096" in str(caught.value)


def test_cancel_and_deadline(served) -> None:
    context = zmq.Context()
    try:
        socket = served.raw_socket(context)
        socket.send_multipart(_submit(request_id="long", max_tokens=2000, stream=False))
        socket.send_multipart(encode(Command.CANCEL, Cancel(request_id="long")))
        assert socket.poll(5000)
        command, reply = decode(socket.recv_multipart())
        assert (command, reply.code, reply.request_id) == (Command.ERROR, "cancelled", "long")
    finally:
        context.destroy(linger=0)

    async def too_slow() -> None:
        client = served.client()
        try:
            await client.generate([65], max_tokens=2000, timeout_s=0.5)
        finally:
            await client.close()

    with pytest.raises((RequestTimeout, RequestError)) as caught:
        asyncio.run(too_slow())
    assert "timeout" in str(caught.value) or "within 0.5 s" in str(caught.value)
    records = {r.request_id: r for r in served.records(2)}
    assert records["long"].outcome == "cancelled"
    assert any(r.outcome == "timeout" for r in records.values())


def test_one_bad_request_fails_alone_among_many(served) -> None:
    async def run() -> list:
        client = served.client(timeout_s=30)
        try:
            good = [client.generate([70 + i], max_tokens=5) for i in range(10)]
            return await asyncio.gather(client.generate([1, -1], max_tokens=5), *good,
                                        return_exceptions=True)
        finally:
            await client.close()

    bad, *good = asyncio.run(run())
    assert isinstance(bad, RequestError) and bad.code == "bad_request"
    assert [r.token_ids for r in good] == [mock_continuation([70 + i], 5) for i in range(10)]

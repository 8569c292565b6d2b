"""A property-based fuzzer over raw frames against a live broker, on both its sockets (with the
deployment's key, so the frames reach the broker's parser): whatever arrives, the broker answers
only well-formed messages, logs no internal error, and serves a real request afterwards."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsslurm.launcher.engines.mock import mock_continuation
from tsslurm.protocol import HEADER, Command, ProtocolError, WorkerInfo, decode, encode

pytestmark = pytest.mark.timeout(240)

COMMANDS = [command.value for command in Command] + [b"\x00", b"\xff", b"\x01\x01", b""]
FIELDS = ["request_id", "max_tokens", "prompt_token_ids", "prompt", "model", "sampling",
          "stream", "deadline_s", "resume_from", "items", "deltas", "worker_id", "role",
          "request_ids", "token_ids", "finish_reason", "kv_transfer_params", "handed_back",
          "fatal", "running", "code", "nonce"]

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
near_valid = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
bodies = st.one_of(st.binary(max_size=120), values.map(msgspec.msgpack.encode),
                   near_valid.map(msgspec.msgpack.encode))
structured = st.tuples(st.sampled_from([HEADER, b"TSS/2", b"", b"TSS/1 "]),
                       st.sampled_from(COMMANDS), bodies).map(list)
loose = st.lists(st.one_of(st.just(HEADER), st.sampled_from(COMMANDS), bodies), min_size=1,
                 max_size=6)
messages = st.one_of(structured, loose)

PHANTOM = encode(Command.READY, WorkerInfo(worker_id="phantom", role="decoder", model="mock-llama",
                                           engine="mock", kv_capacity_tokens=1000))


def test_fuzzed_frames_never_take_the_broker_down(deployment) -> None:
    d = deployment()
    d.start_broker()
    d.start_worker("d1", "decode")
    context = zmq.Context()
    client = d.raw_socket(context)
    worker = d.raw_socket(context, port="worker")
    sent = {"client": 0, "worker": 0}

    @settings(max_examples=600, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message=messages, to_worker=st.booleans(), registered=st.booleans())
    def fuzz(message: list[bytes], to_worker: bool, registered: bool) -> None:
        if to_worker:
            if registered:
                worker.send_multipart(PHANTOM)
            worker.send_multipart(message)
            sent["worker"] += 1
        else:
            client.send_multipart(message)
            sent["client"] += 1

    try:
        fuzz()
        replies = _drain(client, quiet_ms=1000)
        assert sent["client"] > 200 and sent["worker"] > 200
        assert replies, "bad client messages get error replies"
        for frames in replies:
            command, _ = decode(frames)  # every reply is well-formed
            assert command in (Command.ERROR, Command.STREAM, Command.PONG)
        assert sum(decode(f)[0] is Command.ERROR for f in replies) >= sent["client"] // 2
        for frames in _drain(worker, quiet_ms=300):
            assert decode(frames)[0] in (Command.DISCONNECT, Command.WORK, Command.HEARTBEAT,
                                         Command.ABORT)
    finally:
        context.destroy(linger=0)
    assert d.processes["broker"].poll() is None, "the broker is alive"
    log = d.broker_log()
    assert "internal error" not in log and "Traceback" not in log
    assert "refused request None (protocol)" in log and "refused a worker message" in log

    async def real_request() -> list[int]:
        api = d.client(timeout_s=30)
        try:
            return (await api.generate([80, 81, 82], max_tokens=10)).token_ids
        finally:
            await api.close()

    assert asyncio.run(real_request()) == mock_continuation([80, 81, 82], 10)


def _drain(socket: zmq.Socket, quiet_ms: int) -> list[list[bytes]]:
    replies = []
    while socket.poll(quiet_ms):
        replies.append(socket.recv_multipart())
    return replies



def test_decode_rejects_every_fuzzed_message_with_a_protocol_error() -> None:
    """The same messages against the decoder alone: a typed body or a ProtocolError, nothing
    else escapes."""

    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    @given(message=messages, from_worker=st.booleans())
    def check(message: list[bytes], from_worker: bool) -> None:
        try:
            command, body = decode(message, from_worker=from_worker)
        except ProtocolError:
            return
        assert isinstance(command, Command) and isinstance(body, msgspec.Struct)

    check()

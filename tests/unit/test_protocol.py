"""The wire protocol: every body round-trips through its typed decoder; malformed messages are
ProtocolErrors that say what is wrong; optional fields keep older peers compatible."""

from __future__ import annotations

import msgspec
import pytest

from tsslurm import protocol as p

pytestmark = pytest.mark.timeout(30)

EXAMPLES: list[tuple[p.Command, msgspec.Struct]] = [
    (p.Command.SUBMIT, p.GenerateRequest(
        request_id="r1", max_tokens=16, prompt_token_ids=[1, 2, 3], model="m",
        sampling=p.Sampling(temperature=0.5, top_p=0.9, top_k=4, seed=7, stop_token_ids=[2]),
        stream=False, deadline_s=3.5, resume_from=2)),
    (p.Command.SUBMIT, p.GenerateRequest(request_id="r2", max_tokens=1, prompt="hello")),
    (p.Command.CANCEL, p.Cancel(request_id="r1")),
    (p.Command.PING, p.Ping(nonce=42)),
    (p.Command.PONG, p.Ping(nonce=42)),
    (p.Command.STREAM, p.StreamBatch([
        p.TokenDelta(request_id="r1", token_ids=[5, 6], offset=3),
        p.TokenDelta(request_id="r2", token_ids=[], finish_reason="length", prompt_tokens=5,
                     completion_tokens=9, offset=9)])),
    (p.Command.ERROR, p.ErrorReply(code="too_long", message="m", request_id="r1")),
    (p.Command.READY, p.WorkerInfo(worker_id="w", role="convertible", model="m", engine="mock",
                                   kv_connector={"kv_connector": "NixlConnector"},
                                   kv_capacity_tokens=100, prefill_cap_tokens=50, job_id="12")),
    (p.Command.WORK, p.WorkBatch([p.WorkItem(
        request_id="r1", mode="decode", prompt_token_ids=[1], max_tokens=3,
        kv_transfer_params={"remote_engine_id": "e", "remote_block_ids": [1, 2]})])),
    (p.Command.ABORT, p.Abort(["r1", "r2"])),
    (p.Command.OUTPUT, p.OutputBatch([p.OutputItem(request_id="r1", token_ids=[9],
                                                   finish_reason="stop", error=None)])),
    (p.Command.DRAIN, p.Drain(reason="scale down")),
    (p.Command.DISCONNECT, p.Disconnect(reason="SIGTERM", handed_back=["r1"], fatal=False)),
]


@pytest.mark.parametrize(("command", "body"), EXAMPLES, ids=lambda x: getattr(x, "name", ""))
def test_round_trip(command: p.Command, body: msgspec.Struct) -> None:
    frames = p.encode(command, body)
    assert frames[0] == p.HEADER and frames[1] == command.value
    decoded_command, decoded = p.decode(frames, from_worker=command is p.Command.READY)
    assert decoded_command is command
    assert decoded == body


def test_heartbeat_body_depends_on_direction() -> None:
    stats = p.WorkerStats(running=3, waiting=1, kv_used_tokens=10, kv_usage=0.5, draining=True)
    assert p.decode(p.encode(p.Command.HEARTBEAT, stats), from_worker=True)[1] == stats
    beat = p.BrokerBeat(time=12.5)
    assert p.decode(p.encode(p.Command.HEARTBEAT, beat), from_worker=False)[1] == beat


@pytest.mark.parametrize(("frames", "message"), [
    ([p.HEADER, b"\x01"], "expected 3 frames"),
    ([p.HEADER, b"\x01", b"", b""], "expected 3 frames"),
    ([b"TSS/2", b"\x01", b"\x80"], "unsupported protocol header"),
    ([b"", b"\x01", b"\x80"], "unsupported protocol header"),
    ([p.HEADER, b"\x7f", b"\x80"], "unknown command"),
    ([p.HEADER, b"", b"\x80"], "unknown command"),
    ([p.HEADER, b"\x01", b"\xc1"], "bad SUBMIT body"),
    ([p.HEADER, b"\x01", msgspec.msgpack.encode({"request_id": 5, "max_tokens": 1})],
     "bad SUBMIT body"),
    ([p.HEADER, b"\x01", msgspec.msgpack.encode({"max_tokens": 1})], "bad SUBMIT body"),
    ([p.HEADER, b"\x14", msgspec.msgpack.encode({"items": [{"request_id": "x",
                                                           "token_ids": ["a"]}]})],
     "bad OUTPUT body"),
    ([p.HEADER, b"\x01", msgspec.msgpack.encode([1, 2, 3])], "bad SUBMIT body"),
])
def test_malformed_messages_are_protocol_errors(frames: list[bytes], message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message):
        p.decode(frames)


@pytest.mark.parametrize("ids", [[1, -1], [1 << 31], [1 << 40]])
def test_token_ids_out_of_range_are_a_bad_submit_body(ids: list[int]) -> None:
    body = msgspec.msgpack.encode({"request_id": "r", "max_tokens": 1, "prompt_token_ids": ids})
    with pytest.raises(p.ProtocolError, match="bad SUBMIT body") as caught:
        p.decode([p.HEADER, p.Command.SUBMIT.value, body])
    assert caught.value.command is p.Command.SUBMIT
    with pytest.raises(p.ProtocolError) as framing:
        p.decode([b"TSS/2", p.Command.SUBMIT.value, body])
    assert framing.value.command is None


def test_oversized_message_is_refused_before_decoding() -> None:
    body = p.GenerateRequest(request_id="big", max_tokens=1, prompt_token_ids=[1] * 5_000)
    frames = p.encode(p.Command.SUBMIT, body)
    with pytest.raises(p.ProtocolError, match="exceeds the limit"):
        p.decode(frames, max_bytes=1_000)
    assert p.decode(frames, max_bytes=100_000)[1] == body


def test_a_message_from_an_older_peer_without_the_new_fields_decodes() -> None:
    old_submit = msgspec.msgpack.encode({"request_id": "r", "max_tokens": 4,
                                         "prompt_token_ids": [1]})
    _, request = p.decode([p.HEADER, p.Command.SUBMIT.value, old_submit])
    assert request.resume_from == 0
    old_delta = msgspec.msgpack.encode({"deltas": [{"request_id": "r", "token_ids": [1]}]})
    _, batch = p.decode([p.HEADER, p.Command.STREAM.value, old_delta])
    assert batch.deltas[0].offset == 0


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    newer = msgspec.msgpack.encode({"request_id": "r", "max_tokens": 4, "prompt_token_ids": [1],
                                    "priority": "high"})
    assert p.decode([p.HEADER, p.Command.SUBMIT.value, newer])[1].request_id == "r"


def test_defaults_are_omitted_on_the_wire() -> None:
    small = p.encode(p.Command.OUTPUT, p.OutputBatch([p.OutputItem(request_id="r",
                                                                   token_ids=[1])]))[2]
    assert msgspec.msgpack.decode(small) == {"items": [{"request_id": "r", "token_ids": [1]}]}

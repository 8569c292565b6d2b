"""The wire protocol between clients, the broker and engine workers (ZeroMQ multipart messages).

Every message is `[HEADER, command, body]` (a ROUTER socket prepends the peer identity):
- HEADER names the protocol and its version; a peer speaking another version gets an ERROR
  (client) or DISCONNECT (worker) and is otherwise ignored.
- command is one byte (below), so routing never decodes a body it does not need.
- body is msgpack of the command's msgspec Struct, decoded by a typed decoder per command.
  Nothing is ever unpickled from the wire.

Client <-> broker (client DEALER -> broker frontend ROUTER):
  SUBMIT  GenerateRequest         client -> broker   (retrying with the same id is idempotent)
  CANCEL  Cancel                  client -> broker
  PING    Ping                    client -> broker, answered by PONG
  STREAM  StreamBatch             broker -> client   (token deltas of one or more requests)
  ERROR   ErrorReply              broker -> client   (request_id is None for connection errors)

Worker <-> broker (worker DEALER -> broker backend ROUTER):
  READY       WorkerInfo          worker -> broker, first message, carries capabilities
  HEARTBEAT   WorkerStats / BrokerBeat   both ways; silence for interval x liveness = dead
  WORK        WorkBatch           broker -> worker
  ABORT       Abort               broker -> worker
  OUTPUT      OutputBatch         worker -> broker (one per engine iteration, many requests)
  DRAIN       Drain               broker -> worker: finish in-flight work, accept no more
  DISCONNECT  Disconnect          both ways: the sender is leaving or refuses the peer
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

HEADER = b"TSS/1"
PROTOCOL_VERSION = 1


class Command(bytes, enum.Enum):
    SUBMIT = b"\x01"
    CANCEL = b"\x02"
    PING = b"\x03"
    PONG = b"\x04"
    STREAM = b"\x05"
    ERROR = b"\x06"
    READY = b"\x10"
    HEARTBEAT = b"\x11"
    WORK = b"\x12"
    ABORT = b"\x13"
    OUTPUT = b"\x14"
    DRAIN = b"\x15"
    DISCONNECT = b"\x16"


class _Body(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, gc=False):
    """Base of every body: unknown fields are ignored (a newer minor peer may add some). Bodies
    are plain data trees, never cycles, so the garbage collector need not track them (gc=False):
    the broker and workers make hundreds of thousands a second."""


# ---- requests -------------------------------------------------------------------------------

class Sampling(_Body, frozen=True):
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: list[int] = []
    ignore_eos: bool = False


TokenId = Annotated[int, msgspec.Meta(ge=0, lt=1 << 31)]
"""Checked while decoding (in C): a prompt (or a worker's output) with a negative or absurd id is
a bad body."""


class GenerateRequest(_Body):
    request_id: str
    max_tokens: int
    prompt_token_ids: list[TokenId] | None = None
    prompt: str | None = None
    """Text the broker tokenizes (off its event loop) when token ids are not given."""
    model: str | None = None
    sampling: Sampling = Sampling()
    stream: bool = True
    deadline_s: float | None = None
    """Seconds the client is prepared to wait; the broker fails the request after that."""
    resume_from: int = 0
    """Output tokens the client already holds: a re-SUBMIT of a known request_id from a new socket
    (after a reconnect) streams from there. A re-SUBMIT from the same socket resends nothing."""


class Cancel(_Body):
    request_id: str


class Ping(_Body):
    nonce: int = 0


class TokenDelta(_Body):
    request_id: str
    token_ids: list[int]
    finish_reason: str | None = None
    """None while streaming; "stop" | "length" | "abort" at the end."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Usage, filled in on the last delta."""
    offset: int = 0
    """Index of token_ids[0] in the request's output, so a client can drop what it already has."""


class StreamBatch(_Body):
    deltas: list[TokenDelta]


ErrorCode = Literal[
    "bad_request", "unknown_model", "too_long", "overloaded", "unavailable", "timeout",
    "internal", "protocol", "cancelled",
]


class ErrorReply(_Body):
    code: str
    message: str
    request_id: str | None = None


# ---- workers --------------------------------------------------------------------------------

Role = Literal["prefiller", "decoder", "convertible"]


class WorkerInfo(_Body):
    worker_id: str
    role: str
    model: str
    engine: str
    """"vllm" or "mock"."""
    engine_version: str = ""
    partition: str = ""
    gpus: int = 1
    job_id: str | None = None
    node: str = ""
    kv_connector: dict[str, Any] = {}
    kv_capacity_tokens: int = 0
    prefill_cap_tokens: int = 0
    """Convertible decoders: prefill tokens they accept in flight without hurting their decodes."""
    protocol_version: int = PROTOCOL_VERSION


class WorkerStats(_Body):
    running: int = 0
    waiting: int = 0
    kv_used_tokens: int = 0
    kv_usage: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    draining: bool = False


class BrokerBeat(_Body):
    time: float = 0.0


WorkMode = Literal["prefill", "decode", "full"]


class WorkItem(_Body):
    request_id: str
    mode: str
    """"prefill": prefill only (max_tokens=1, KV kept for remote decode); "decode": pull KV given
    kv_transfer_params then generate; "full": prefill and decode locally (plain or converted)."""
    prompt_token_ids: list[int]
    max_tokens: int
    sampling: Sampling = Sampling()
    kv_transfer_params: dict[str, Any] | None = None


class WorkBatch(_Body):
    items: list[WorkItem]


class Abort(_Body):
    request_ids: list[str]


class OutputItem(_Body):
    request_id: str
    token_ids: list[TokenId] = []
    finish_reason: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    """Set on the finished output of a prefill: what the decoder needs to pull the KV."""
    error: str | None = None
    """The engine failed this request; the broker re-routes or fails it."""


class OutputBatch(_Body):
    items: list[OutputItem]


class Drain(_Body):
    reason: str = ""


class Disconnect(_Body):
    reason: str = ""
    handed_back: list[str] = []
    """Request ids the worker gives back unfinished (the broker re-routes them)."""
    fatal: bool = False
    """The engine died: what the worker still held is lost."""


BODY_TYPES: dict[Command, type[_Body]] = {
    Command.SUBMIT: GenerateRequest,
    Command.CANCEL: Cancel,
    Command.PING: Ping,
    Command.PONG: Ping,
    Command.STREAM: StreamBatch,
    Command.ERROR: ErrorReply,
    Command.READY: WorkerInfo,
    Command.WORK: WorkBatch,
    Command.ABORT: Abort,
    Command.OUTPUT: OutputBatch,
    Command.DRAIN: Drain,
    Command.DISCONNECT: Disconnect,
}
"""HEARTBEAT has two bodies by direction: WorkerStats (worker -> broker), BrokerBeat (back)."""


class ProtocolError(ValueError):
    """A message that does not follow this protocol; the text says what is wrong. `command` is
    set when the frames were fine but the command's body was not."""

    def __init__(self, message: str, command: Command | None = None):
        super().__init__(message)
        self.command = command


_encoder = msgspec.msgpack.Encoder()
_decoders = {command: msgspec.msgpack.Decoder(body) for command, body in BODY_TYPES.items()}
_commands = {command.value: command for command in Command}
_stats_decoder = msgspec.msgpack.Decoder(WorkerStats)
_beat_decoder = msgspec.msgpack.Decoder(BrokerBeat)


def encode(command: Command, body: msgspec.Struct) -> list[bytes]:
    """The frames of one message (without any routing identity)."""
    return [HEADER, command.value, _encoder.encode(body)]


def decode(frames: list[bytes], from_worker: bool = False, max_bytes: int = 16 << 20) -> tuple[Command, Any]:
    """(command, body) of a message's frames (identity already removed). Raises ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames (header, command, body), got {len(frames)}")
    header, command_frame, body = frames
    if header != HEADER:
        raise ProtocolError(f"unsupported protocol header {bytes(header)[:16]!r}; "
                            f"this broker speaks {HEADER!r}")
    if len(body) > max_bytes:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")
    command = _commands.get(bytes(command_frame))
    if command is None:
        raise ProtocolError(f"unknown command {bytes(command_frame)[:8]!r}")
    decoder = _heartbeat_decoder(from_worker) if command is Command.HEARTBEAT else _decoders[command]
    try:
        return command, decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ProtocolError(f"bad {command.name} body: {error}", command) from None


def _heartbeat_decoder(from_worker: bool) -> msgspec.msgpack.Decoder:
    return _stats_decoder if from_worker else _beat_decoder

"""The worker's connection to the broker, on its own thread: a CURVE DEALER socket, heartbeats both
ways, reconnection. Socket I/O never waits for the engine and the engine never waits for the
network; the engine side (an asyncio loop, worker.py) and this thread meet in two places:

- engine -> link: an inproc PAIR pipe carrying protocol frames to forward, or local controls:
  [b"@ready", READY frames] (send it now and after every reconnect), [b"@stop"] (flush, end).
- link -> engine: `deliver(messages)`, called on this thread with every message read in one
  turn (the worker hands them to its loop with call_soon_threadsafe): the broker's WORK / ABORT /
  DRAIN / fatal DISCONNECT frames, and [b"@reset"] when the link registered again (the broker went
  silent or asked for it): what the engine still holds was re-routed and must be aborted.
Heartbeats carry `stats_body`, the latest WorkerStats the engine side encoded.

A "register again" that comes within a heartbeat of the last READY answers messages queued
before it (a broker restarting on the same address receives the heartbeats the socket held) and
is ignored. Once the engine side's DISCONNECT has gone out the link is leaving: no more heartbeats, no
reconnection and no answer to the broker's "register again", so a worker shutting its engine
down is never routed work again."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import zmq

from tsslurm.frames import send_frames
from tsslurm.protocol import HEADER, Command, Disconnect, ProtocolError, WorkerStats, decode, encode
from tsslurm.statedir import Keypair

log = logging.getLogger("tsslurm.launcher")

READY, STOP, RESET = b"@ready", b"@stop", b"@reset"
_HEARTBEAT, _DISCONNECT = Command.HEARTBEAT.value, Command.DISCONNECT.value
_counter = itertools.count()

Deliver = Callable[[list[list[bytes]]], None]


class BrokerTarget(NamedTuple):
    address: str
    server_public_key: bytes
    client_keys: Keypair


class BrokerLink:
    def __init__(self, context: zmq.Context, locate: Callable[[], BrokerTarget],
                 heartbeat_s: float, liveness: int):
        self.context = context
        self._locate = locate
        self._heartbeat_s = heartbeat_s
        self._expiry_s = heartbeat_s * liveness
        self.stats_body: bytes = encode(Command.HEARTBEAT, WorkerStats())[2]
        self.reconnects = 0
        self._endpoint = f"inproc://tsslurm-link-{id(self)}-{next(_counter)}"
        self.outbox = _pair(context, self._endpoint, bind=True)
        """Engine side: frames for the broker (send from the engine's thread only)."""
        self._deliver: Deliver = lambda messages: None
        self._thread = threading.Thread(target=self._run, name="tsslurm-link", daemon=True)

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._thread.start()

    def ready(self, frames: list[bytes]) -> None:
        send_frames(self.outbox, [READY, *frames])

    def send(self, frames: list[bytes]) -> None:
        send_frames(self.outbox, frames)

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what the engine side sent, then end the thread and close the pipe."""
        if self._thread.is_alive():
            send_frames(self.outbox, [STOP])
            self._thread.join(timeout_s)
        self.outbox.close(linger=0)

    # ---- the link thread ------------------------------------------------------------------------

    def _run(self) -> None:
        from_engine = _pair(self.context, self._endpoint, bind=False)
        state = _LinkState()
        poller = zmq.Poller()
        poller.register(from_engine, zmq.POLLIN)
        try:
            while self._turn(poller, from_engine, state):
                pass
        finally:
            if state.dealer is not None:
                state.dealer.close(linger=2000)
            from_engine.close(linger=0)

    def _turn(self, poller: zmq.Poller, from_engine: zmq.Socket, state: _LinkState) -> bool:
        timeout_ms = max(1, int(1000 * (state.next_beat - time.monotonic()))) \
            if state.dealer is not None and not state.leaving else int(1000 * self._heartbeat_s)
        events = dict(poller.poll(timeout_ms))
        if from_engine in events and not self._from_engine(from_engine, poller, state):
            return False
        if state.dealer is not None and state.dealer in events:
            self._from_broker(state)
        self._keep_alive(poller, state)
        return True

    def _from_engine(self, socket: zmq.Socket, poller: zmq.Poller, state: _LinkState) -> bool:
        for frames in _drain(socket):
            if frames[0] == READY:
                state.ready = frames[1:]
                self._connect(poller, state, reset=False)
            elif frames[0] == STOP:
                return False
            else:
                state.leaving = state.leaving or (len(frames) == 3 and frames[1] == _DISCONNECT)
                if state.dealer is not None:
                    _to_broker(state.dealer, frames)
        return True

    def _from_broker(self, state: _LinkState) -> None:
        assert state.dealer is not None
        messages = []
        for frames in _drain(state.dealer):
            state.heard = time.monotonic()
            if len(frames) == 3 and frames[1] == _HEARTBEAT:
                continue
            if len(frames) == 3 and frames[1] == _DISCONNECT and not _is_fatal(frames):
                if state.leaving or time.monotonic() - state.ready_sent < self._heartbeat_s:
                    continue  # leaving; or an answer to messages queued before the last READY
                log.warning("the broker asked this worker to register again")
                messages.append([RESET])
                self._send_ready(state)
                continue
            messages.append(frames)
        if messages:
            self._deliver(messages)

    def _keep_alive(self, poller: zmq.Poller, state: _LinkState) -> None:
        if state.leaving:
            return
        now = time.monotonic()
        if state.ready and state.dealer is None and now >= state.next_beat:
            self._connect(poller, state, reset=False)
        if state.dealer is None:
            return
        if now - state.heard > self._expiry_s:
            log.warning("no heartbeat from the broker for %.1f s: reconnecting", now - state.heard)
            self._connect(poller, state, reset=True)
        elif now >= state.next_beat:
            _to_broker(state.dealer, (HEADER, _HEARTBEAT, self.stats_body))
            state.next_beat = now + self._heartbeat_s

    def _connect(self, poller: zmq.Poller, state: _LinkState, reset: bool) -> None:
        if state.dealer is not None:
            poller.unregister(state.dealer)
            state.dealer.close(linger=0)
            state.dealer = None
            self.reconnects += 1
        if reset:
            self._deliver([[RESET]])
        now = time.monotonic()
        state.next_beat = now + self._heartbeat_s
        try:
            target = self._locate()
        except Exception as error:  # noqa: BLE001 - the broker is restarting: no connection file
            log.warning("cannot locate the broker (%s); retrying", error)
            return
        state.dealer = _dealer(self.context, target)
        poller.register(state.dealer, zmq.POLLIN)
        self._send_ready(state)
        state.heard = now

    @staticmethod
    def _send_ready(state: _LinkState) -> None:
        assert state.dealer is not None
        _to_broker(state.dealer, state.ready)
        state.ready_sent = time.monotonic()


class _LinkState:
    __slots__ = ("dealer", "heard", "leaving", "next_beat", "ready", "ready_sent")

    def __init__(self) -> None:
        self.dealer: zmq.Socket | None = None
        self.leaving = False
        self.ready_sent = -1e9
        self.ready: list[bytes] = []
        self.heard = time.monotonic()
        self.next_beat = time.monotonic()


def _to_broker(dealer: zmq.Socket, frames: Sequence[bytes]) -> None:
    """Never block the link: without a connection (a refused key, a broker gone) the message is
    dropped; the broker re-routes what a silent worker held, and a reconnect follows."""
    try:
        send_frames(dealer, frames)
    except zmq.Again:
        pass


def _dealer(context: zmq.Context, target: BrokerTarget) -> zmq.Socket:
    socket = context.socket(zmq.DEALER)
    socket.curve_serverkey = target.server_public_key
    socket.curve_publickey, socket.curve_secretkey = target.client_keys
    socket.setsockopt(zmq.SNDHWM, 1_000_000)
    socket.setsockopt(zmq.RCVHWM, 1_000_000)
    socket.linger = 0
    socket.connect(target.address)
    return socket


def _pair(context: zmq.Context, endpoint: str, bind: bool) -> zmq.Socket:
    socket = context.socket(zmq.PAIR)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.RCVHWM, 0)
    socket.linger = 0
    if bind:
        socket.bind(endpoint)
    else:
        socket.connect(endpoint)
    return socket


def _drain(socket: zmq.Socket, limit: int = 1000) -> list[list[bytes]]:
    messages = []
    for _ in range(limit):
        try:
            messages.append(socket.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
    return messages


def _is_fatal(frames: list[bytes]) -> bool:
    try:
        _, body = decode(frames, from_worker=False)
    except ProtocolError:
        return False
    return isinstance(body, Disconnect) and body.fatal

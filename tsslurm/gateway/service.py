"""What one gateway process holds for its deployment: the connection file's model and context
length, the tokenizer codec and chat template, the API keys, the broker client (one asyncio
client, every request multiplexed on its socket), health and metrics. Built before the server
starts, so a bad state directory or tokenizer is a clear error, not a failing server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgspec

from tsslurm.client import AsyncClient, ClientError, RequestError, RequestTimeout
from tsslurm.gateway.chat import ChatTemplate, load_chat_template
from tsslurm.gateway.codec import TextCodec, load_codec, model_directory
from tsslurm.gateway.errors import busy, unauthorized
from tsslurm.gateway.health import HealthCheck, ProbeFailed
from tsslurm.gateway.keys import KeyChecker, keys_file
from tsslurm.gateway.metrics import GatewayMetrics
from tsslurm.gateway.requests import Limits
from tsslurm.protocol import Sampling
from tsslurm.statedir import Connection, StateDir, StateDirError


class GatewaySettings(msgspec.Struct, frozen=True, kw_only=True):
    state_dir: Path
    request_timeout_s: float = 600.0
    """Longest a request may take; the broker fails it then (HTTP 504)."""
    max_in_flight: int = 4096
    """Generation requests served at once; beyond that, 429."""
    health_fresh_s: float = 10.0
    probe_timeout_s: float = 3.0
    client_idle_s: float = 2.0
    """Silence after which the client pings the broker (see tsslurm.client)."""
    client_reconnects: int = 1
    """Reconnections tried before a request fails with 503 (about 2 x client_idle_s each)."""


class Gateway:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.connection: Connection = StateDir.open(settings.state_dir).read_connection()
        self.codec: TextCodec = load_codec(self.connection.tokenizer)
        self.template: ChatTemplate = load_chat_template(model_directory(self.connection.tokenizer))
        self.limits = Limits(self.connection.model, self.connection.max_context_tokens,
                             self.codec.vocab_size)
        self.keys = KeyChecker(keys_file(settings.state_dir))
        self.metrics = GatewayMetrics()
        self.health = HealthCheck(self._probe, fresh_s=settings.health_fresh_s)
        self.created = int(time.time())
        self.in_flight = 0
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        assert self._client is not None, "the gateway's client starts with the server"
        return self._client

    async def start(self) -> None:
        """On the server's event loop (the client's socket belongs to it)."""
        s = self.settings
        self._client = AsyncClient(state_dir=s.state_dir, timeout_s=s.request_timeout_s,
                                   reconnects=s.client_reconnects, idle_s=s.client_idle_s)
        self._client.tokenizer = None  # token ids in and out; the gateway decodes text itself

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def authorize(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("no API key: send `Authorization: Bearer <key>` (create a key with "
                               "`tsslurm gateway --create-key NAME`)")
        if not self.keys.allows(key.strip()):
            problem = f" ({self.keys.problem})" if self.keys.problem else ""
            raise unauthorized(f"incorrect API key{problem}")

    def admit(self) -> None:
        if self.in_flight >= self.settings.max_in_flight:
            raise busy(f"the gateway is serving its maximum of {self.settings.max_in_flight} "
                       "requests; retry later")

    async def _probe(self) -> None:
        timeout = self.settings.probe_timeout_s
        probe = self.client.generate(self.codec.encode("ok", add_special_tokens=False) or [0],
                                     1, Sampling(temperature=0.0),
                                     request_id=f"gateway-health-{uuid.uuid4().hex}",
                                     timeout_s=timeout, stream=False)
        try:
            await asyncio.wait_for(probe, timeout + 1.0)  # the broker's own timeout comes first
        except TimeoutError:
            raise ProbeFailed(f"the broker did not answer a probe within {timeout + 1.0} s",
                              broker_reached=False) from None
        except RequestError as error:
            what = f"no worker served a probe within {timeout} s" if error.code == "timeout" \
                else f"the broker refused or failed a probe: {error}"
            raise ProbeFailed(what, broker_reached=True) from None
        except (RequestTimeout, ClientError, StateDirError) as error:
            raise ProbeFailed(f"the broker did not answer a probe within {timeout} s: {error}",
                              broker_reached=False) from None

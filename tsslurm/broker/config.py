"""The broker's settings, derived from a profile (or given directly in tests and benchmarks).
Pure: no I/O."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tsslurm.profile.schema import Profile, Slo


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    deployment: str
    model: str
    max_context_tokens: int
    host: str = "127.0.0.1"
    client_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    worker_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    heartbeat_s: float = 1.0
    liveness: int = 5
    max_retries: int = 3
    request_timeout_s: float = 600.0
    max_message_bytes: int = 16 << 20
    max_queued: int = 10_000
    """Requests waiting in the broker for a worker; beyond that new ones get "overloaded"."""
    absorb_tokens: dict[str, int] = {}
    """Partition -> prefill tokens a prefiller there absorbs in flight (V_P x burst window)."""
    default_absorb_tokens: int = 8192
    prefill_cap_tokens: int = 2048
    """Prefill tokens a decoder taking whole requests may have in flight (convertible cap)."""
    slo: Slo = msgspec.field(default_factory=Slo)
    """The TTFT targets that order the queues (queueing.py)."""
    recent_ttl_s: float = 120.0
    """How long a finished result stays available to a client that re-submits it."""

    @property
    def expiry_s(self) -> float:
        return self.heartbeat_s * self.liveness

    def absorb_for(self, partition: str) -> int:
        return self.absorb_tokens.get(partition, self.default_absorb_tokens)


def config_from_profile(profile: Profile, **overrides: object) -> BrokerConfig:
    """The burst window is the tightest TTFT target: a prefiller absorbs what it prefills in it."""
    window_s = profile.slo.ttft_tiers[0].ttft_ms / 1000.0 if profile.slo.ttft_tiers else 0.25
    absorb = {p.name: max(1, int(p.velocities.prefill_tokens_per_s * window_s))
              for p in profile.partitions if p.velocities is not None}
    broker_settings = msgspec.structs.asdict(profile.broker)
    settings = {name: broker_settings[name] for name in _FROM_PROFILE_BROKER}
    settings.update(deployment=profile.deployment, model=profile.model.name,
                    max_context_tokens=profile.model.max_context_tokens, absorb_tokens=absorb,
                    prefill_cap_tokens=profile.engine.convertible_prefill_cap_tokens,
                    slo=profile.slo)
    settings.update(overrides)
    return msgspec.convert(settings, BrokerConfig)


_FROM_PROFILE_BROKER = ("host", "client_port", "worker_port", "heartbeat_s", "liveness",
                        "max_retries", "request_timeout_s", "max_message_bytes")

"""The gateway's Prometheus metrics (`/metrics`), in a registry of its own. Observed once per
request, never per token."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                       "/metrics"})
"""Endpoint labels; any other path counts as "other" (a label per path would let any client
grow the metrics without bound)."""


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tsslurm_gateway_requests", "Requests answered, by endpoint and "
                                "HTTP status", ["endpoint", "status"], registry=r)
        self.in_flight = Gauge("tsslurm_gateway_requests_in_flight",
                               "Generation requests in progress", registry=r)
        self.prompt_tokens = Counter("tsslurm_gateway_prompt_tokens", "Prompt tokens of "
                                     "completed requests", registry=r)
        self.completion_tokens = Counter("tsslurm_gateway_completion_tokens", "Tokens generated "
                                         "for completed requests", registry=r)
        self.disconnects = Counter("tsslurm_gateway_client_disconnects", "Requests whose HTTP "
                                   "client left before the answer ended (cancelled at the "
                                   "engine)", registry=r)
        self.ttft = Histogram("tsslurm_gateway_time_to_first_token_seconds", "Request arrival "
                              "to the first generated text, streamed requests",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("tsslurm_gateway_request_duration_seconds", "Request arrival "
                                  "to the end of the answer", ["endpoint"],
                                  buckets=LATENCY_BUCKETS, registry=r)

    def answered(self, endpoint: str, status: int) -> None:
        label = endpoint if endpoint in ENDPOINTS else \
            "/v1/models" if endpoint.startswith("/v1/models/") else "other"
        self.requests.labels(label, str(status)).inc()

    def completed(self, endpoint: str, prompt_tokens: int, completion_tokens: int,
                  seconds: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.duration.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

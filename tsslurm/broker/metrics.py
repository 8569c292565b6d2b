"""Prometheus metrics of a running deployment (prometheus-client, its own registry), served on the
profile's `broker.metrics_port` by prometheus-client's HTTP thread. The autoscaler updates them
once per tick from what it already computed (rates, pools, velocities, SLO attainment, queue
waits) and observes each finished request's TTFT and TPOT, so scraping costs the broker's loop
nothing."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tsslurm.broker.events import Finished
from tsslurm.broker.status import Status

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.4, 1.0)
WAIT_BUCKETS_S = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.port: int | None = None
        self._server: Any = None
        r = self.registry
        self.arrival_tokens = Gauge("tsslurm_arrival_tokens_per_second",
                                    "Token arrival rate over a sliding window",
                                    ["window_s", "kind"], registry=r)
        self.arrival_requests = Gauge("tsslurm_arrival_requests_per_second",
                                      "Request arrival rate over a sliding window",
                                      ["window_s"], registry=r)
        self.velocity = Gauge("tsslurm_provisioned_tokens_per_second",
                              "Token velocity of the ready workers (profiled V_P, V_D)",
                              ["stage"], registry=r)
        self.pool = Gauge("tsslurm_pool_instances", "Instances per pool, partition and state",
                          ["role", "partition", "state"], registry=r)
        self.ttft = Histogram("tsslurm_ttft_seconds", "Time to first token of finished requests",
                              buckets=LATENCY_BUCKETS_S, registry=r)
        self.tpot = Histogram("tsslurm_tpot_seconds", "Time per output token of finished requests",
                              buckets=TPOT_BUCKETS_S, registry=r)
        self.slo = Gauge("tsslurm_slo_attainment_ratio",
                         "Share of recently finished requests that met their TTFT and TPOT SLO",
                         registry=r)
        self.requests = Counter("tsslurm_requests_total", "Finished requests",
                                ["outcome", "path"], registry=r)
        self.queue_wait = Gauge("tsslurm_queue_wait_estimate_seconds",
                                "Queue-wait estimate the policy uses, per partition",
                                ["partition"], registry=r)
        self.observed_wait = Histogram("tsslurm_queue_wait_seconds",
                                       "Observed Slurm queue waits of this deployment's jobs",
                                       ["partition"], buckets=WAIT_BUCKETS_S, registry=r)
        self.available = Gauge("tsslurm_partition_available",
                               "1 when new jobs are submitted to the partition", ["partition"],
                               registry=r)
        self.jobs = Counter("tsslurm_job_transitions_total", "Job state changes",
                            ["role", "partition", "state"], registry=r)

    def serve(self, port: int, host: str) -> int:
        """Start the HTTP endpoint; the port it listens on (`port` 0: an ephemeral one)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._server.server_port
        return self.port

    def finished(self, event: Finished) -> None:
        self.requests.labels(event.outcome, event.path).inc()
        if event.ttft_s is not None:
            self.ttft.observe(event.ttft_s)
        if event.tpot_s is not None:
            self.tpot.observe(event.tpot_s)

    def transition(self, role: str, partition: str, state: str, wait_s: float | None) -> None:
        self.jobs.labels(role, partition, state).inc()
        if wait_s is not None:
            self.observed_wait.labels(partition).observe(wait_s)

    def update(self, status: Status) -> None:
        for rate in status.rates:
            window = f"{rate.window_s:g}"
            self.arrival_tokens.labels(window, "input").set(rate.input_tokens_per_s)
            self.arrival_tokens.labels(window, "output_predicted").set(rate.output_tokens_per_s)
            self.arrival_requests.labels(window).set(rate.requests_per_s)
        for stage, value in status.velocities.items():
            self.velocity.labels(stage).set(value)
        for pool in status.pools:
            for state in ("ready", "starting", "pending", "draining"):
                self.pool.labels(pool.role, pool.partition, state).set(getattr(pool, state))
            if pool.target is not None:
                self.pool.labels(pool.role, pool.partition, "target").set(pool.target)
        if status.slo.attainment is not None:
            self.slo.set(status.slo.attainment)
        for part in status.partitions:
            self.queue_wait.labels(part.name).set(part.queue_wait_s)
            self.available.labels(part.name).set(1 if part.available else 0)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

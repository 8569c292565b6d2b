"""The typed profile tree: what a deployment is (model, engine, partitions, velocities, SLOs, pools,
policy, broker). Frozen msgspec Structs with defaults; no I/O and no validation beyond types here
(structural errors: validate.py; cross-field rules: rules.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from tsslurm.slurm.duration import parse_slurm_duration


def _positive(why: str, kind: type = float) -> Any:
    return Annotated[kind, Meta(gt=0, description=why)]


def _non_negative(why: str, kind: type = float) -> Any:
    return Annotated[kind, Meta(ge=0, description=why)]


def _port(why: str) -> Any:
    return Annotated[int, Meta(ge=0, le=65535, description=why)]


class _Node(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every profile node: immutable, unknown keys are errors."""


class Model(_Node):
    name: str
    """Served model name (what clients and the OpenAI gateway call it)."""
    path: str
    """Weights: a local directory (or a Hugging Face id the engine can resolve on the cluster)."""
    tokenizer: str | None = None
    """Directory holding tokenizer.json; defaults to `path`. Read on the head node with `tokenizers`."""
    max_context_tokens: _positive("longer requests are rejected up front", int) = 131072
    tensor_parallel: _positive("an engine spans tensor_parallel GPUs", int) = 1


class Engine(_Node):
    kind: Literal["vllm", "mock"] = "vllm"
    dtype: str = "auto"
    kv_connector: Literal["nixl", "example"] = "nixl"
    """nixl: NixlConnector (GPU clusters; float32 on CPU). example: vLLM's ExampleConnector over a
    shared filesystem directory (CPU tests)."""
    kv_cache_bytes: int | None = None
    """KV cache size per engine; required on CPU where vLLM's own sizing fails."""
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    convertible_prefill_cap_tokens: _positive(
        "a convertible decoder needs room to prefill a burst's requests", int) = 2048
    """Prefill tokens a convertible decoder may have in flight, so its own decodes keep TPOT."""
    extra_args: dict[str, Any] = {}
    """Passed through to vLLM's engine args unchanged."""


class QueueWait(_Node):
    """Expected time a job of this partition waits in the Slurm queue."""

    distribution: Literal["exponential", "fixed", "lognormal"] = "exponential"
    mean_s: _non_negative("queue wait decides how early capacity must be requested") = 60.0
    sigma: _positive("the spread of a lognormal queue wait") = 1.0
    """Shape of the lognormal distribution (ignored by the others)."""


class DecodeStep(_Node):
    """Decode iteration time model: base + per_sequence * batch + per_context_token * KV tokens read.

    Memory-bound decode reads the weights once per step (base) and every sequence's KV (context).
    """

    base_ms: _positive("the decode iteration time sets TPOT")
    per_sequence_ms: _non_negative("a cost per sequence in the batch") = 0.0
    per_context_token_us: _non_negative("a cost per KV token read") = 0.0


class Velocities(_Node):
    """What one instance of the model on one partition's GPUs processes (TokenScale's velocities)."""

    prefill_tokens_per_s: _positive("V_P divides the input-token rate to size the prefill pool")
    """V_P: input tokens/s one prefiller sustains."""
    kv_transfer_tokens_per_s: _positive("V_N bounds how fast prefilled KV reaches decoders")
    """V_N: tokens/s of KV cache the interconnect moves from a prefiller to a decoder."""
    kv_bytes_per_token: _positive("KV bytes per token turn link bandwidth into V_N", int)
    kv_capacity_tokens: _positive("a decoder admits requests only while their KV fits", int)
    """KV cache tokens one decoder holds."""
    decode_step: DecodeStep
    decode_tokens_per_s: list[list[float]]
    """V_D per (input-length bucket, output-length bucket): tokens (input + output) of completed
    requests per second one decoder sustains at the TPOT SLO. Rows: input buckets; columns: output."""
    prefill_overhead_ms: _non_negative("a fixed cost per prefill batch") = 0.0
    """Fixed cost of one prefill batch (scheduling, launch) on top of tokens / V_P."""
    kv_transfer_latency_ms: _non_negative("a fixed cost per KV handoff") = 0.0
    """Fixed cost of one request's KV pull on top of tokens / V_N."""
    measured: dict[str, str] = {}
    """Provenance written by `tsslurm profile`: date, engine version, method."""


class Partition(_Node):
    name: str
    gres: str = "gpu"
    """Typed GRES, e.g. gpu:a100; the count is gpus_per_instance."""
    gpus_per_instance: _positive("every instance holds at least one GPU", int) = 1
    cpus_per_instance: _positive("sbatch needs at least one CPU per job", int) = 8
    mem: str = "64G"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    reservation: str | None = None
    template: str = "gpu.sbatch"
    """sbatch template (file name under sbatch_templates/, or a path)."""
    time_limit: str = "04:00:00"
    queue_wait: QueueWait = QueueWait()
    model_load_s: _non_negative("start-up time decides how early capacity must be requested") = 60.0
    velocities: Velocities | None = None
    site_lines: list[str] = []
    """Shell lines the template runs before the launcher (module loads, container set-up)."""
    sbatch_options: dict[str, str] = {}
    """Extra `#SBATCH --key=value` options a site needs."""

    @property
    def time_limit_s(self) -> float:
        return parse_slurm_duration(self.time_limit)


class TtftTier(_Node):
    max_input_tokens: _positive("the upper bound of a TTFT tier", int)
    ttft_ms: _positive("a TTFT target")


def _paper_ttft_tiers() -> list[TtftTier]:
    return [
        TtftTier(max_input_tokens=256, ttft_ms=250),
        TtftTier(max_input_tokens=1024, ttft_ms=400),
        TtftTier(max_input_tokens=8192, ttft_ms=2000),
    ]


class Slo(_Node):
    """TokenScale's SLOs. Inputs beyond the last tier get its TTFT + input / beyond_tokens_per_s."""

    ttft_tiers: list[TtftTier] = msgspec.field(default_factory=_paper_ttft_tiers)
    ttft_beyond_tokens_per_s: _positive("TTFT of inputs beyond the last tier") = 6667.0
    tpot_ms: _positive("TPOT is half of every request's SLO") = 100.0

    def ttft_ms_for(self, input_tokens: int) -> float:
        """A request's TTFT target: the first tier its input is below, beyond the last tier that
        tier's TTFT + input / ttft_beyond_tokens_per_s (the broker's queue deadlines)."""
        for tier in self.ttft_tiers:
            if input_tokens < tier.max_input_tokens:
                return tier.ttft_ms
        return self.ttft_tiers[-1].ttft_ms + 1000.0 * input_tokens / self.ttft_beyond_tokens_per_s

    def ttft_targets_s(self, input_tokens: np.ndarray) -> np.ndarray:
        """ttft_ms_for of many requests at once, in seconds (the simulator's deadlines, SLO
        accounting and bounds)."""
        limits = np.array([t.max_input_tokens for t in self.ttft_tiers])
        targets = np.array([t.ttft_ms for t in self.ttft_tiers], dtype=np.float64) / 1000.0
        tier = np.searchsorted(limits, input_tokens, side="right")
        beyond = targets[-1] + input_tokens / self.ttft_beyond_tokens_per_s
        return np.where(tier < len(limits), targets[np.minimum(tier, len(limits) - 1)], beyond)


class LengthBuckets(_Node):
    """Edges of the 3x3 (input length, output length) grid V_D is profiled on."""

    input_edges: list[int] = msgspec.field(default_factory=lambda: [1024, 4096])
    output_edges: list[int] = msgspec.field(default_factory=lambda: [128, 512])


class PoolBounds(_Node):
    min: _non_negative("a pool never holds fewer instances", int) = 0
    max: _non_negative("a pool never holds more instances", int) = 16


class Pools(_Node):
    prefill: PoolBounds = PoolBounds(min=1)
    decode: PoolBounds = PoolBounds(min=1)
    convertible: PoolBounds = PoolBounds(min=0, max=8)
    gpu_budget: int | None = None
    """Most GPUs the deployment may hold at once, all pools and partitions together."""


class PolicyConfig(_Node):
    name: str = "tokenscale"
    """A registered policy name, or `module:function` for a user's own."""
    params: dict[str, Any] = {}


class Broker(_Node):
    host: str = "127.0.0.1"
    """Address the broker binds; workers on compute nodes need the head node's cluster address."""
    client_port: _port("the broker's client port") = 0
    worker_port: _port("the broker's worker port") = 0
    """0: an ephemeral port, published in the connection file."""
    metrics_port: _port("the Prometheus port") | None = None
    tick_s: _positive("the policy runs every tick") = 1.0
    heartbeat_s: _positive("heartbeats detect dead workers and a dead broker") = 1.0
    liveness: _positive("a peer is dead after `liveness` missed heartbeats", int) = 5
    """Heartbeats missed before a peer is declared dead."""
    max_retries: _non_negative("re-routes of a request before it fails", int) = 3
    request_timeout_s: _positive("a request fails after this long") = 600.0
    max_message_bytes: _positive("larger messages are refused", int) = 16 << 20


class Profile(_Node):
    deployment: str
    model: Model
    partitions: list[Partition]
    engine: Engine = Engine()
    slo: Slo = Slo()
    buckets: LengthBuckets = LengthBuckets()
    pools: Pools = Pools()
    policy: PolicyConfig = PolicyConfig()
    broker: Broker = Broker()
    state_dir: str = "~/.tsslurm/{deployment}"
    """Per-deployment state (keys, connection file, SQLite, logs): on the shared home filesystem."""

    def partition(self, name: str | None = None) -> Partition:
        """The partition called `name`, or the first when no name is given; UnknownPartition
        (a KeyError) when the profile has none of that name."""
        if name is None:
            return self.partitions[0]
        for partition in self.partitions:
            if partition.name == name:
                return partition
        raise UnknownPartition(name, [p.name for p in self.partitions])


class UnknownPartition(KeyError):
    """A partition name the profile does not have; `known` lists those it has."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.name = name
        self.known = ", ".join(known)

"""What the profiling job is asked and what it returns: typed, frozen msgspec Structs that submitit
pickles across the job boundary. Raw measurements only; the figures a profile holds (V_P, the
decode step model, V_D, V_N) are derived from them by `analysis`. Pure: no I/O."""

from __future__ import annotations

import msgspec

from tsslurm.profile.schema import Profile


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every result record: immutable, keyword-only."""


class ProfileRequest(_Record):
    profile: Profile
    partition: str
    quick: bool = False
    headroom: float = 0.8
    """V_D is measured at the largest batch whose decode step stays within headroom x TPOT (the
    rule `perfmodel.roofline_decode_velocity` applies, so measured and modelled V_D compare)."""
    seed: int = 0


class EngineFacts(_Record):
    """What the engine reports about itself once started."""

    version: str
    dtype: str
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    start_s: list[float]
    """VllmEngine.start of each engine (the first includes importing vLLM)."""


class PrefillLevel(_Record):
    """`concurrency` prompts of `input_tokens` each, submitted at once, all prefilled."""

    concurrency: int
    input_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.concurrency * self.input_tokens / self.seconds


class LockstepSample(_Record):
    """A batch decoding in lockstep: its decode step time and the KV tokens it held."""

    batch: int
    input_tokens: int
    output_tokens: int
    step_s: float
    context_tokens: int
    """KV tokens of the whole batch in the middle of the measured window."""
    steps: float
    """Decode steps inside the measured window (all requests running)."""


class DecodeCell(_Record):
    """V_D's measurement for one (input bucket, output bucket) cell."""

    row: int
    column: int
    sample: LockstepSample
    limited_by: str
    """What capped the batch: "tpot", "kv" (KV capacity), "max_num_seqs" (the engine's limit)."""
    trials: int = 1


class PullSample(_Record):
    """`requests` KV pulls of `input_tokens` each from the prefiller, timed on the decoder."""

    requests: int
    input_tokens: int
    seconds: float
    pulled_tokens: int
    """Prompt tokens the decoder counted as pulled through the KV connector."""


class Measurements(_Record):
    partition: str
    node: str
    job_id: str
    """The Slurm job id, or "local"."""
    started_at: str
    """ISO 8601 UTC."""
    quick: bool
    cpus: list[int]
    gpus: str
    engine: EngineFacts
    model_load_s: float
    """Job process start to the first engine ready: what a launcher job spends before serving."""
    kv_bytes_per_token: int
    prefill_levels: list[PrefillLevel]
    prefill_singles: list[PrefillLevel]
    decode_samples: list[LockstepSample]
    cells: list[DecodeCell]
    pulls: list[PullSample]
    seconds: float
    """Wall time of the measurement function."""
    engine_cpu_wait: float | None = None
    """Share of the measuring time (engines ready to the last probe) the measured engine's
    busiest thread waited for a CPU (contention.py); None where the kernel does not say."""


class JobFailure(_Record):
    """The job ran but could not measure: which stage failed and why (for the user)."""

    stage: str
    message: str
    node: str = ""

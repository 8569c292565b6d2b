"""SLO accounting of a run: per-request outcomes and the attainment figures the report shows.

A request meets its SLO when it is served, its TTFT is within the tier of its input length and its
TPOT (mean time per output token after the first) is within the target. A request that is
rejected (longer than the model's context), killed with its worker, or unfinished when the run
ends is a miss for TTFT, TPOT and the SLO alike. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tsslurm.profile.schema import Slo

UNFINISHED, SERVED, REJECTED, KILLED = 0, 1, 2, 3


@dataclass
class Outcomes:
    """Filled in as the run goes: first token time, finish time and status per request."""

    status: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray

    @classmethod
    def empty(cls, count: int) -> Outcomes:
        return cls(np.zeros(count, dtype=np.int8), np.full(count, np.nan), np.full(count, np.nan))


@dataclass(frozen=True)
class Attainment:
    meets: np.ndarray
    ttft_ok: np.ndarray
    tpot_ok: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray


def attainment(outcomes: Outcomes, arrival_s: np.ndarray, input_tokens: np.ndarray,
               output_tokens: np.ndarray, slo: Slo) -> Attainment:
    served = outcomes.status == SERVED
    ttft = outcomes.first_token_s - arrival_s
    decoding = np.maximum(output_tokens - 1, 1)
    tpot = np.where(output_tokens > 1, (outcomes.finish_s - outcomes.first_token_s) / decoding, 0.0)
    slack = 1e-9
    ttft_ok = served & (ttft <= slo.ttft_targets_s(input_tokens) + slack)
    tpot_ok = served & (tpot <= slo.tpot_ms / 1000.0 + slack)
    return Attainment(ttft_ok & tpot_ok, ttft_ok, tpot_ok, ttft, tpot)


def summary(result: Attainment, outcomes: Outcomes, output_tokens: np.ndarray) -> dict[str, float]:
    served = outcomes.status == SERVED
    count = max(len(served), 1)
    decoded = served & (output_tokens > 1)
    return {
        "slo_attainment": float(result.meets.sum()) / count,
        "ttft_attainment": float(result.ttft_ok.sum()) / count,
        "tpot_attainment": float(result.tpot_ok.sum()) / count,
        "ttft_p50_ms": _percentile_ms(result.ttft_s[served], 50),
        "ttft_p99_ms": _percentile_ms(result.ttft_s[served], 99),
        "tpot_p50_ms": _percentile_ms(result.tpot_s[decoded], 50),
        "tpot_p99_ms": _percentile_ms(result.tpot_s[decoded], 99),
    }


def _percentile_ms(values: np.ndarray, q: float) -> float | None:
    if not len(values):
        return None
    return round(float(np.percentile(values, q)) * 1000.0, 3)

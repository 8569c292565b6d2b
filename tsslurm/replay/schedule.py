"""What a replay sends and when: the trace prepared exactly as `tsslurm simulate` prepares it
(window, then rate scale, then time compressed by the speedup), and a deterministic prompt of the
recorded length for each request. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tsslurm.sim.trace import Trace, TraceError, compress_time, parse_window, scale_rate, window

PRINTABLE = (32, 127)
"""Prompt token ids: printable ASCII, which every tokenizer of a mock deployment accepts."""


@dataclass(frozen=True)
class Scenario:
    """How a loaded trace becomes the replayed one; `tsslurm simulate` takes the same options."""

    window: str | None = None
    scale: float = 1.0
    speedup: float = 1.0
    seed: int = 0

    def check(self) -> None:
        for name, value in (("--scale", self.scale), ("--speedup", self.speedup)):
            if not math.isfinite(value) or value <= 0:
                raise TraceError(f"bad {name} {value!r}: it must be a number > 0")


def prepare(trace: Trace, scenario: Scenario) -> Trace:
    """The requests to send, arrivals in seconds from the replay's start."""
    scenario.check()
    if scenario.window:
        trace = window(trace, *parse_window(scenario.window))
    trace = scale_rate(trace, scenario.scale, seed=scenario.seed)
    return compress_time(trace, scenario.speedup) if scenario.speedup != 1.0 else trace


def prompt(seed: int, index: int, length: int) -> list[int]:
    """Request `index`'s prompt: `length` token ids (at least one), the same for the same seed."""
    rng = np.random.default_rng([seed, index])
    return rng.integers(*PRINTABLE, size=max(1, int(length))).tolist()


def max_tokens(output_tokens: int) -> int:
    """Tokens to ask for: the recorded output (the mock engine generates exactly that many)."""
    return max(1, int(output_tokens))


def due(arrival_s: np.ndarray, sent: int, elapsed_s: float) -> int:
    """How many requests are due by `elapsed_s` (index one past the last), at least `sent`."""
    return max(sent, int(np.searchsorted(arrival_s, elapsed_s, side="right")))

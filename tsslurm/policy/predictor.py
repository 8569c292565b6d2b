"""The output-length predictor: what a request will generate, learned only from FINISHED requests.

Requests are keyed by the power-of-two class of their input length (1-1, 2-3, 4-7, ... tokens);
each class keeps the output lengths of its last `history` finished requests, counted per
output-length bucket (the V_D grid's columns). A forecast is a distribution, not a point: the
share of requests that fell in each output bucket and their mean length there. Spreading a new
request's expected tokens over the buckets that way keeps lambda'_b unbiased, where a point guess
would put all of a request's tokens in one bucket whose V_D may be 8x off.

A class with few finished requests borrows from all requests; with none at all, the prior
(`prior_output_tokens`) stands in. Pure: no I/O, no clock, deterministic."""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from tsslurm.perfmodel import bucket_of


class OutputForecast(NamedTuple):
    shares: tuple[float, ...]
    """Probability that the output falls in each output bucket (sums to 1)."""
    bucket_means: tuple[float, ...]
    """Mean output tokens of the requests that fell in each bucket."""

    @property
    def mean(self) -> float:
        return sum(s * m for s, m in zip(self.shares, self.bucket_means))

    @property
    def likeliest_bucket(self) -> int:
        return max(range(len(self.shares)), key=self.shares.__getitem__)

    def spread(self, input_tokens: int) -> tuple[float, ...]:
        """Expected input + output tokens the request puts in each output bucket."""
        return tuple(s * (input_tokens + m) for s, m in zip(self.shares, self.bucket_means))


class _History:
    """The last `size` output lengths of one input class, with per-bucket counts and sums."""

    __slots__ = ("counts", "lengths", "size", "sums")

    def __init__(self, size: int, buckets: int):
        self.size = size
        self.lengths: deque[tuple[int, int]] = deque()
        self.counts = [0] * buckets
        self.sums = [0] * buckets

    def add(self, length: int, bucket: int) -> None:
        self.lengths.append((length, bucket))
        self.counts[bucket] += 1
        self.sums[bucket] += length
        if len(self.lengths) > self.size:
            old, old_bucket = self.lengths.popleft()
            self.counts[old_bucket] -= 1
            self.sums[old_bucket] -= old

    def __len__(self) -> int:
        return len(self.lengths)


class OutputPredictor:
    def __init__(self, output_edges: list[int], history: int = 2000, min_samples: int = 30,
                 prior_output_tokens: int = 256):
        if history <= 0 or min_samples <= 0 or prior_output_tokens <= 0:
            raise ValueError("history, min_samples and prior_output_tokens must be positive")
        self.output_edges = list(output_edges)
        self.buckets = len(output_edges) + 1
        self.min_samples = min_samples
        self.prior_output_tokens = prior_output_tokens
        self._history_size = history
        self._classes: dict[int, _History] = {}
        self._all = _History(history, self.buckets)
        self._cache: dict[int, OutputForecast] = {}

    def predict(self, input_tokens: int) -> OutputForecast:
        key = _input_class(input_tokens)
        forecast = self._cache.get(key)
        if forecast is None:
            forecast = self._cache[key] = self._forecast(self._classes.get(key))
        return forecast

    def learn(self, input_tokens: int, output_tokens: int) -> None:
        """A finished request's true output length (never call this before it finished)."""
        key = _input_class(input_tokens)
        history = self._classes.get(key)
        if history is None:
            history = self._classes[key] = _History(self._history_size, self.buckets)
        bucket = bucket_of(output_tokens, self.output_edges)
        history.add(output_tokens, bucket)
        self._all.add(output_tokens, bucket)
        self._cache.clear()

    def _forecast(self, history: _History | None) -> OutputForecast:
        if history is not None and len(history) >= self.min_samples:
            return _from_counts(history.counts, history.sums)
        if len(self._all):
            return _from_counts(self._all.counts, self._all.sums)
        return self._prior()

    def _prior(self) -> OutputForecast:
        bucket = bucket_of(self.prior_output_tokens, self.output_edges)
        shares = tuple(1.0 if b == bucket else 0.0 for b in range(self.buckets))
        means = tuple(float(self.prior_output_tokens) for _ in range(self.buckets))
        return OutputForecast(shares, means)


def _input_class(input_tokens: int) -> int:
    return max(1, input_tokens).bit_length()


def _from_counts(counts: list[int], sums: list[int]) -> OutputForecast:
    total = sum(counts)
    shares = tuple(c / total for c in counts)
    means = tuple(s / c if c else 0.0 for s, c in zip(sums, counts))
    return OutputForecast(shares, means)

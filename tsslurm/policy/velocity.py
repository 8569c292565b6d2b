"""The token-velocity estimator: sliding windows over request arrivals that give, per window, the
arrival rates TokenScale scales on (TokenRates: lambda_in, lambda'_b per length bucket, requests/s).

Each arrival carries its input tokens and the predictor's output forecast, already spread over the
output-length buckets (see predictor.OutputForecast), so lambda'_b is the expected token rate of
each (input bucket, output bucket) cell. Every window keeps running sums and a queue of the events
inside it: adding an event and expiring one are O(1), so a million arrivals cost a million steps.

Windows (DEFAULT_WINDOWS_S, shortest first):
- 10 s sees a burst while it happens (the Azure code trace's 10-s peak is 13x its mean) with
  enough requests in it (~55 at the conv trace's 5.5 req/s) that Poisson noise stays near 13 %;
- 60 s is the rate new capacity must meet: about the queue wait or the model load of one job;
- 300 s is the trend that base capacity follows through a lull, several start-up times long.

Pure: no I/O, no clock (times are given by the caller, in seconds, non-decreasing)."""

from __future__ import annotations

from collections import deque

from tsslurm.policy.snapshot import TokenRates

DEFAULT_WINDOWS_S: tuple[float, ...] = (10.0, 60.0, 300.0)
MIN_SPAN_S = 1.0
"""Rates are never divided by less than this, so the first arrival does not look like a flood."""

Event = tuple[float, int, float, int, tuple[float, ...]]
"""(time, input tokens, predicted output tokens, input bucket, expected tokens per output bucket)."""


class _Window:
    __slots__ = ("cells", "events", "input_tokens", "length", "output_tokens", "requests")

    def __init__(self, length: float, input_buckets: int, output_buckets: int):
        self.length = length
        self.events: deque[Event] = deque()
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0.0
        self.cells = [[0.0] * output_buckets for _ in range(input_buckets)]

    def add(self, event: Event) -> None:
        self.events.append(event)
        self._apply(event, 1)

    def expire(self, now: float) -> None:
        horizon = now - self.length
        events = self.events
        while events and events[0][0] <= horizon:
            self._apply(events.popleft(), -1)
        if not events:
            self._zero()

    def rates(self, span: float) -> TokenRates:
        return TokenRates(
            window_s=self.length,
            requests_per_s=self.requests / span,
            input_tokens_per_s=self.input_tokens / span,
            predicted_output_tokens_per_s=max(0.0, self.output_tokens) / span,
            bucket_tokens_per_s=[[max(0.0, cell) / span for cell in row] for row in self.cells],
        )

    def _apply(self, event: Event, sign: int) -> None:
        _, input_tokens, output_tokens, input_bucket, spread = event
        self.requests += sign
        self.input_tokens += sign * input_tokens
        self.output_tokens += sign * output_tokens
        row = self.cells[input_bucket]
        for column, tokens in enumerate(spread):
            row[column] += sign * tokens

    def _zero(self) -> None:
        """Running float sums drift by rounding; an empty window is exactly zero again."""
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0.0
        for row in self.cells:
            row[:] = [0.0] * len(row)


class VelocityEstimator:
    """Arrival rates over several sliding windows; `origin` is when observation began."""

    def __init__(self, input_buckets: int, output_buckets: int, origin: float = 0.0,
                 windows_s: tuple[float, ...] = DEFAULT_WINDOWS_S):
        if not windows_s or any(w <= 0 for w in windows_s):
            raise ValueError(f"windows must be positive seconds, got {windows_s!r}")
        self.origin = origin
        self.last_time = origin
        self._windows = [_Window(w, input_buckets, output_buckets) for w in sorted(windows_s)]

    @property
    def windows_s(self) -> tuple[float, ...]:
        return tuple(w.length for w in self._windows)

    def add(self, time: float, input_tokens: int, input_bucket: int,
            spread: tuple[float, ...]) -> None:
        """One arrival: `spread[j]` is the expected input + output tokens it puts in output bucket j."""
        self._advance(time)
        predicted_output = sum(spread) - input_tokens
        event: Event = (time, input_tokens, predicted_output, input_bucket, spread)
        for window in self._windows:
            window.add(event)

    def rates(self, now: float) -> list[TokenRates]:
        """TokenRates per window at `now`, shortest window first."""
        self._advance(now)
        elapsed = max(now - self.origin, MIN_SPAN_S)
        return [w.rates(min(w.length, elapsed)) for w in self._windows]

    def _advance(self, now: float) -> None:
        if now < self.last_time:
            raise ValueError(f"time went backwards: {now} after {self.last_time}")
        self.last_time = now
        for window in self._windows:
            window.expire(now)

"""The vLLM engine's own statistics, as tsslurm reports them: a vLLM stat logger that keeps the
latest scheduler stats (running, waiting, KV usage) and counts prompt tokens by source (computed
locally, hit in the local prefix cache, pulled through the KV connector) and generated tokens.

Token rates are taken over a sliding window. The stat logger runs on the AsyncLLM output handler
(the launcher's event loop); vLLM is imported only when the engine builds its loggers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tsslurm.protocol import WorkerStats

RATE_WINDOW_S = 10.0


@dataclass
class EngineCounters:
    """Totals since the engine started (never reset)."""

    prompt_tokens: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_local_cache: int = 0
    prompt_tokens_external: int = 0
    """Prompt tokens whose KV came through the connector (a prefiller's transfer)."""
    generation_tokens: int = 0
    finished_requests: int = 0


@dataclass
class _Scheduler:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0


class StatsCollector:
    """Receives vLLM's per-iteration stats; answers WorkerStats. Pure bookkeeping, no I/O."""

    def __init__(self, counters: EngineCounters, window_s: float = RATE_WINDOW_S) -> None:
        self.counters = counters
        self.window_s = window_s
        self.scheduler = _Scheduler()
        self._samples: deque[tuple[float, int, int]] = deque()

    def factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        """vLLM's per-engine stat logger factory: (config, engine index) -> logger."""
        return _logger_class()(self, vllm_config, engine_index)

    def record(self, scheduler_stats: Any, iteration_stats: Any, now: float) -> None:
        if scheduler_stats is not None:
            self.scheduler = _Scheduler(
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                kv_usage=float(scheduler_stats.kv_cache_usage))
        if iteration_stats is not None:
            self._count(iteration_stats, now)

    def _count(self, iteration: Any, now: float) -> None:
        prompt = iteration.prompt_token_stats
        totals = self.counters
        totals.prompt_tokens += prompt.total
        totals.prompt_tokens_computed += prompt.computed
        totals.prompt_tokens_local_cache += prompt.local_cache_hit
        totals.prompt_tokens_external += prompt.external_kv_transfer
        totals.generation_tokens += iteration.num_generation_tokens
        totals.finished_requests += len(iteration.finished_requests)
        self._samples.append((now, prompt.computed, iteration.num_generation_tokens))

    def worker_stats(self, kv_capacity_tokens: int, now: float) -> WorkerStats:
        prefill_rate, decode_rate = self.rates(now)
        return WorkerStats(
            running=self.scheduler.running, waiting=self.scheduler.waiting,
            kv_usage=self.scheduler.kv_usage,
            kv_used_tokens=round(self.scheduler.kv_usage * kv_capacity_tokens),
            prefill_tokens_per_s=prefill_rate, decode_tokens_per_s=decode_rate)

    def rates(self, now: float) -> tuple[float, float]:
        """(prefill, decode) tokens/s over the last window."""
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
        prefill = sum(sample[1] for sample in self._samples)
        decode = sum(sample[2] for sample in self._samples)
        return prefill / self.window_s, decode / self.window_s


_LOGGER_CLASS: type | None = None


def _logger_class() -> type:
    """The StatLoggerBase subclass, defined on first use so vllm is imported only then."""
    global _LOGGER_CLASS
    if _LOGGER_CLASS is None:
        _LOGGER_CLASS = _define_logger_class()
    return _LOGGER_CLASS


def _define_logger_class() -> type:
    import time

    from vllm.v1.metrics.loggers import StatLoggerBase

    class TsslurmStatLogger(StatLoggerBase):
        def __init__(self, collector: StatsCollector, vllm_config: Any, engine_index: int = 0):
            self.collector = collector
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            self.collector.record(scheduler_stats, iteration_stats, time.monotonic())

        def log_engine_initialized(self) -> None:
            return None

    return TsslurmStatLogger

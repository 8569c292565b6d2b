"""Routing decisions: which worker takes a request next, and in which mode. Pure: no I/O, no
clock, no mutation; the broker applies the Placement it gets back.

Paths:
- disaggregated: a prefiller prefills (mode "prefill"), then a decoder pulls the KV ("decode").
- converted (the burst path): when prefill demand (tokens queued in the broker plus tokens in
  flight on prefillers) exceeds what ready prefillers absorb, a convertible decoder whose prefill
  tokens in flight stay under its cap takes the whole request ("full").
- plain: with no prefiller ready at all, decoders and convertibles take whole requests ("full"),
  so a deployment of decoders alone still serves.
Among eligible workers the least loaded wins: for prefill, the share of its absorb budget in
flight; for decode, the share of its KV cache held (the broker's reservations or the worker's own
report, whichever is higher), then the number of requests it holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol, TypeVar

from tsslurm.protocol import WorkerStats

PREFILLER, DECODER, CONVERTIBLE = "prefiller", "decoder", "convertible"
PREFILL, DECODE, FULL = "prefill", "decode", "full"
DISAGGREGATED, CONVERTED, PLAIN = "disaggregated", "converted", "plain"


class WorkerLoad(Protocol):
    """What routing reads of a worker (tsslurm.broker.workers.Worker provides it)."""

    role: str
    accepting: bool
    in_flight_count: int
    prefill_tokens: int
    """Prefill tokens the broker has sent it that are not prefilled yet."""
    kv_reserved: int
    """KV tokens (prompt + max output) of the decodes the broker has sent it."""
    kv_capacity: int
    prefill_cap: int
    """Most prefill tokens in flight while it also decodes (convertibles and plain decoders)."""
    absorb_tokens: int
    """Prefillers: the prefill tokens in flight it absorbs within the burst window."""
    stats: WorkerStats


W = TypeVar("W", bound=WorkerLoad)


class Placement(NamedTuple):
    worker: WorkerLoad
    mode: str
    path: str


def place_new(prompt_tokens: int, kv_need: int, workers: Sequence[W],
              queued_prefill_tokens: int) -> Placement | None:
    """Where a request that needs a prefill goes, or None to keep it queued in the broker.

    `queued_prefill_tokens` counts the broker's prefill queue, this request included."""
    prefillers = [w for w in workers if w.accepting and w.role == PREFILLER]
    if not prefillers:
        worker = _least_loaded_decoder(w for w in workers if w.role != PREFILLER
                                       and _takes_prefill(w, prompt_tokens, kv_need))
        return Placement(worker, FULL, PLAIN) if worker is not None else None
    if prefill_demand(prefillers, queued_prefill_tokens) > absorb_capacity(prefillers):
        converted = _least_loaded_decoder(w for w in workers if w.role == CONVERTIBLE
                                          and _takes_prefill(w, prompt_tokens, kv_need))
        if converted is not None:
            return Placement(converted, FULL, CONVERTED)
    prefiller = _least_loaded_prefiller(w for w in prefillers if _absorbs(w, prompt_tokens))
    return Placement(prefiller, PREFILL, DISAGGREGATED) if prefiller is not None else None


def place_decode(kv_need: int, workers: Sequence[W]) -> W | None:
    """The decoder (or convertible) that pulls a prefilled request's KV and decodes it."""
    return _least_loaded_decoder(w for w in workers if w.accepting and w.role != PREFILLER
                                 and kv_fits(w, kv_need))


def prefill_demand(prefillers: Iterable[WorkerLoad], queued_prefill_tokens: int) -> int:
    return queued_prefill_tokens + sum(w.prefill_tokens for w in prefillers)


def absorb_capacity(prefillers: Iterable[WorkerLoad]) -> int:
    return sum(w.absorb_tokens for w in prefillers)


def kv_fits(worker: WorkerLoad, kv_need: int) -> bool:
    """An idle worker takes anything (its engine has the last word on an oversized request)."""
    if worker.kv_capacity <= 0 or worker.in_flight_count == 0:
        return True
    return max(worker.kv_reserved, worker.stats.kv_used_tokens) + kv_need <= worker.kv_capacity


def _takes_prefill(worker: WorkerLoad, prompt_tokens: int, kv_need: int) -> bool:
    if not worker.accepting or not kv_fits(worker, kv_need):
        return False
    return worker.prefill_tokens == 0 or worker.prefill_tokens + prompt_tokens <= worker.prefill_cap


def _absorbs(worker: WorkerLoad, prompt_tokens: int) -> bool:
    return worker.prefill_tokens == 0 or worker.prefill_tokens + prompt_tokens <= worker.absorb_tokens


def _least_loaded_prefiller(candidates: Iterable[W]) -> W | None:
    return min(candidates, default=None,
               key=lambda w: (w.prefill_tokens / max(w.absorb_tokens, 1),
                              w.in_flight_count + w.stats.waiting))


def _least_loaded_decoder(candidates: Iterable[W]) -> W | None:
    return min(candidates, default=None, key=decode_load)


def decode_load(worker: WorkerLoad) -> tuple[float, int]:
    held = max(worker.kv_reserved, worker.stats.kv_used_tokens)
    return held / max(worker.kv_capacity, 1), worker.in_flight_count + worker.stats.waiting

"""Simulated engine workers: how a prefiller and a decoder (plain or convertible) spend time.

Both expose the load attributes the broker's routing reads (tsslurm.broker.routing.WorkerLoad),
so the simulator routes with the broker's own pure functions.

- Prefiller: a local FIFO of assigned prompts, prefilled in batches of at most `max_batch_tokens`
  (long prompts are chunked across batches); a batch takes perfmodel.prefill_seconds. Finished
  prompts' KV leaves over the prefiller's link at V_N, one transfer after another.
- Decoder: continuous batching in closed form. Between two events (a join, a finish, the end of a
  prompt's prefill) the batch is fixed, each iteration costs perfmodel's decode step
  (base + per_sequence x B + per_context_token x C) and the context C grows by B per iteration,
  so the time of k iterations is an arithmetic series: a k + c B k^2 / 2. Iterations are fluid
  (fractional), which keeps one event per join and per finish instead of one per token.
  A decoder taking whole requests (convertible, or any decoder when no prefiller is ready)
  prefills them FIFO, `chunk_tokens` per iteration on top of its decode step.
Pure: no I/O, no clock."""

from __future__ import annotations

import heapq
import math
from collections import deque

from tsslurm.perfmodel import decode_step_seconds, prefill_seconds
from tsslurm.profile.schema import Velocities
from tsslurm.protocol import WorkerStats

IDLE_STATS = WorkerStats()
"""The simulator reserves prompt + output KV up front, so reservations always cover use."""
FINISH_SLACK = 1e-7
"""Iterations (a fraction of one) under which a finish or a prefill counts as reached."""


class Prefiller:
    role = "prefiller"
    kv_reserved = 0
    kv_capacity = 0
    prefill_cap = 0
    stats = IDLE_STATS

    def __init__(self, job_id: str, velocities: Velocities, absorb_tokens: int,
                 max_batch_tokens: int):
        self.job_id = job_id
        self.velocities = velocities
        self.absorb_tokens = absorb_tokens
        self.max_batch_tokens = max_batch_tokens
        self.accepting = True
        self.in_flight_count = 0
        self.prefill_tokens = 0
        self.queue: deque[list[int]] = deque()
        """[request, prompt tokens not yet prefilled] in arrival order."""
        self.batch_done: list[int] = []
        self.busy = False
        self.link_free_at = 0.0

    def assign(self, request: int, tokens: int) -> None:
        self.queue.append([request, tokens])
        self.in_flight_count += 1
        self.prefill_tokens += tokens

    def start_batch(self) -> float:
        """Take the next batch off the local queue; return its duration (0.0 when idle)."""
        budget, done = self.max_batch_tokens, []
        tokens = 0
        while self.queue and budget > 0:
            head = self.queue[0]
            take = min(head[1], budget)
            head[1] -= take
            budget -= take
            tokens += take
            if head[1] == 0:
                done.append(head[0])
                self.queue.popleft()
        self.batch_done = done
        self.busy = tokens > 0
        return prefill_seconds(tokens, self.velocities) if tokens else 0.0

    def release(self, tokens: int) -> None:
        self.in_flight_count -= 1
        self.prefill_tokens -= tokens

    def send_kv(self, now: float, tokens: int) -> float:
        """Start a KV transfer on this prefiller's link; return when it arrives (the fixed
        latency, perfmodel.kv_transfer_seconds', does not hold the link)."""
        start = max(now, self.link_free_at)
        self.link_free_at = start + tokens / self.velocities.kv_transfer_tokens_per_s
        return self.link_free_at + self.velocities.kv_transfer_latency_ms / 1000.0

    @property
    def idle(self) -> bool:
        return not self.busy and not self.queue


class Decoder:
    absorb_tokens = 0
    stats = IDLE_STATS

    def __init__(self, job_id: str, role: str, velocities: Velocities, prefill_cap: int,
                 chunk_tokens: int):
        self.job_id = job_id
        self.role = role
        self.accepting = True
        self.in_flight_count = 0
        self.prefill_tokens = 0
        self.kv_reserved = 0
        self.kv_capacity = velocities.kv_capacity_tokens
        self.prefill_cap = prefill_cap
        step = velocities.decode_step
        self.step = step
        self.per_context_s = step.per_context_token_us / 1e6
        self.chunk_tokens = chunk_tokens
        self.chunk_s = prefill_seconds(chunk_tokens, velocities)
        self.batch = 0
        self.context = 0.0
        self.progress = 0.0
        """Iterations run since the decoder started (fluid)."""
        self.updated_at = 0.0
        self.generated = 0.0
        self.finishing: list[tuple[float, int, int]] = []
        """Heap of (progress at which it finishes, request, its context then)."""
        self.prefilling: deque[list[int]] = deque()
        self.version = 0

    # ---- closed-form time ---------------------------------------------------------------------

    def _iteration_base(self) -> float:
        """Seconds of the next iteration at the current batch and context."""
        seconds = decode_step_seconds(self.batch, 0, self.step) + self.per_context_s * self.context
        return seconds + (self.chunk_s if self.prefilling else 0.0)

    def advance(self, now: float) -> None:
        """Run the fluid iterations between the last update and `now` (no event in between)."""
        elapsed = now - self.updated_at
        self.updated_at = now
        if elapsed <= 0 or (self.batch == 0 and not self.prefilling):
            return
        a = self._iteration_base()
        growth = self.per_context_s * self.batch
        done = 2 * elapsed / (a + math.sqrt(a * a + 2 * growth * elapsed))
        self.progress += done
        self.context += self.batch * done
        self.generated += self.batch * done
        self._prefill(done * self.chunk_tokens)

    def _prefill(self, tokens: float) -> None:
        for entry in self.prefilling:
            if tokens <= 0:
                break
            take = min(entry[1], tokens)
            entry[1] -= take
            tokens -= take

    def next_event_at(self) -> float | None:
        """When the next finish or prefill completion happens at the current batch."""
        steps = math.inf
        if self.finishing:
            steps = self.finishing[0][0] - self.progress
        if self.prefilling:
            steps = min(steps, self.prefilling[0][1] / self.chunk_tokens)
        if steps == math.inf:
            return None
        steps = max(steps, 0.0)
        return self.updated_at + self._iteration_base() * steps \
            + self.per_context_s * self.batch * steps * steps / 2

    # ---- requests -----------------------------------------------------------------------------

    def reserve(self, kv_tokens: int) -> None:
        self.kv_reserved += kv_tokens
        self.in_flight_count += 1

    def assign_prefill(self, request: int, tokens: int) -> None:
        self.prefilling.append([request, tokens])
        self.prefill_tokens += tokens

    def join(self, request: int, input_tokens: int, output_tokens: int) -> None:
        """Start decoding: the prompt's KV is here and the first token is out."""
        heapq.heappush(self.finishing, (self.progress + output_tokens - 1, request,
                                        input_tokens + output_tokens - 1))
        self.batch += 1
        self.context += input_tokens

    def take_prefilled(self) -> list[int]:
        done = []
        while self.prefilling and self.prefilling[0][1] <= FINISH_SLACK * self.chunk_tokens:
            done.append(self.prefilling.popleft()[0])
        return done

    def take_finished(self) -> list[int]:
        done = []
        while self.finishing and self.finishing[0][0] <= self.progress + FINISH_SLACK:
            _, request, final_context = heapq.heappop(self.finishing)
            self.batch -= 1
            self.context = max(0.0, self.context - final_context) if self.batch else 0.0
            done.append(request)
        return done

    def release(self, kv_tokens: int) -> None:
        self.kv_reserved -= kv_tokens
        self.in_flight_count -= 1

    @property
    def idle(self) -> bool:
        return self.in_flight_count == 0

    @property
    def kv_used_tokens(self) -> int:
        return int(self.context)

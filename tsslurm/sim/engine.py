"""The discrete-event simulation of one policy on one trace: a thin adapter around the policy code.

Events sit in a heap as (time, sequence, kind, subject, detail); arrivals are merged in from the
trace's sorted arrays. Every tick the engine builds a Snapshot with the policy package's
SnapshotBuilder (fed the same events the broker feeds it), runs the PolicyRunner (policy, guards,
reconciler) and applies the actions to the cluster model. Requests are routed with the broker's
own pure routing functions. A policy sees only the past: the builder learns a request's output
length when it finishes, and a tick at `now` runs before any event after `now`.
Pure: no I/O, no clock."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

from tsslurm.broker.queueing import DeadlineQueue
from tsslurm.broker.routing import PREFILL, place_decode, place_new
from tsslurm.perfmodel import kv_transfer_seconds
from tsslurm.policy.builder import SnapshotBuilder
from tsslurm.policy.runner import PolicyRunner
from tsslurm.policy.snapshot import Action, Cancel, Drain, Submit
from tsslurm.profile.schema import Partition, Profile
from tsslurm.sim.cluster import DRAINING, ENDED, PENDING, READY, STARTING, Cluster, Job, QueueWaits
from tsslurm.sim.results import RunResult, SimConfig, Timeline
from tsslurm.sim.slo import KILLED, REJECTED, SERVED, Outcomes
from tsslurm.sim.trace import Trace
from tsslurm.sim.workers import Decoder, Prefiller

TICK, JOB_START, JOB_READY, JOB_LIMIT, PREFILL_DONE, TRANSFER_DONE, DECODER = range(7)
ROLE_OF_WORKER = {"prefill": "prefiller", "decode": "decoder", "convertible": "convertible"}


class Simulation:
    def __init__(self, trace: Trace, profile: Profile, runner: PolicyRunner,
                 config: SimConfig | None = None,
                 progress: Callable[[float], None] | None = None):
        config = config or SimConfig()
        self.trace, self.profile, self.runner, self.config = trace, profile, runner, config
        self.progress = progress
        self.partition = next(p for p in profile.partitions if p.velocities is not None)
        self.builder = SnapshotBuilder.from_profile(profile)
        scale = runner.startup_scale
        self.cluster = Cluster(QueueWaits(config.seed, scale), load_scale=scale)
        self.inputs = trace.input_tokens.tolist()
        self.outputs = trace.output_tokens.tolist()
        self.ids = [str(i) for i in range(len(trace))]
        self.ttft_deadlines = (trace.arrival_s
                               + profile.slo.ttft_targets_s(trace.input_tokens)).tolist()
        self.outcomes = Outcomes.empty(len(trace))
        self.absorb = self._absorb_tokens()
        self.max_batch = config.max_batch_tokens or profile.engine.max_num_batched_tokens or 8192
        self.chunk = config.chunk_tokens or self._default_chunk()
        self.heap: list[tuple[float, int, int, object, object]] = []
        self.seq = 0
        self.workers: list[Prefiller | Decoder] = []
        self.prefillers: list[Prefiller] = []
        self.convertibles: list[Decoder] = []
        self.decoders: list[Decoder] = []
        """Plain decoders and convertibles: where a prefilled request's KV can go."""
        self.queue: DeadlineQueue[int] = DeadlineQueue()
        self.queued_tokens = 0
        self.decode_wait: DeadlineQueue[tuple[int, Prefiller | None]] = DeadlineQueue()
        self.open = 0
        self.generated_at_tick: dict[str, float] = {}
        self.timeline = Timeline([], {r: [] for r in ROLE_OF_WORKER}, [])
        self.decisions: list[tuple[float, dict[str, dict[str, int]]]] = []
        self.steps: list = []

    def _absorb_tokens(self) -> int:
        tiers = self.profile.slo.ttft_tiers
        window_s = tiers[0].ttft_ms / 1000.0 if tiers else 0.25
        return max(1, int(self.partition.velocities.prefill_tokens_per_s * window_s))

    def _default_chunk(self) -> int:
        v = self.partition.velocities
        half_tpot = self.profile.slo.tpot_ms / 2000.0
        return max(16, min(self.profile.engine.convertible_prefill_cap_tokens,
                           int(half_tpot * v.prefill_tokens_per_s)))

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        arrivals = self.trace.arrival_s.tolist()
        last = arrivals[-1] if arrivals else 0.0
        deadline = last + self.config.drain_grace_s
        if self.config.warm_start:
            self._warm_start()
        self._push(0.0, TICK, None, None)
        index, count, now = 0, len(arrivals), 0.0
        while True:
            next_arrival = arrivals[index] if index < count else math.inf
            event_time = self.heap[0][0] if self.heap else math.inf
            now = min(next_arrival, event_time)
            if index >= count and self.open == 0:
                break
            if now > deadline:
                now = deadline
                break
            if event_time <= next_arrival:
                _, _, kind, subject, detail = heapq.heappop(self.heap)
                self._handle(now, kind, subject, detail)
            else:
                self._arrive(now, index)
                index += 1
        end = deadline if self.open else max(self._last_finish(), last)
        return RunResult(self.outcomes, self.cluster, end, self.timeline, self.decisions,
                         self.steps)

    def _last_finish(self) -> float:
        finished = self.outcomes.finish_s
        return float(np.nanmax(finished)) if np.isfinite(finished).any() else 0.0

    def _push(self, time: float, kind: int, subject: object, detail: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (time, self.seq, kind, subject, detail))

    def _handle(self, now: float, kind: int, subject: object, detail: object) -> None:
        if kind == DECODER:
            self._decoder_event(now, subject, detail)
        elif kind == TRANSFER_DONE:
            self._transfer_done(now, subject, detail)
        elif kind == PREFILL_DONE:
            self._prefill_done(now, subject)
        elif kind == TICK:
            self._tick(now)
        elif kind == JOB_START:
            self._job_start(now, subject)
        elif kind == JOB_READY:
            self._job_ready(now, subject)
        elif kind == JOB_LIMIT and subject.state != ENDED:
            self.cluster.timed_out += 1
            self._kill(now, subject)

    # ---- requests ----------------------------------------------------------------------------

    def _arrive(self, now: float, request: int) -> None:
        x, o = self.inputs[request], self.outputs[request]
        if x + o > self.profile.model.max_context_tokens:
            self.outcomes.status[request] = REJECTED
            return
        self.open += 1
        self.builder.arrival(now, self.ids[request], x)
        self.queue.push(request, self.ttft_deadlines[request])
        self.queued_tokens += x
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        """Place queued requests in the broker's order until the next cannot be placed (its rule)."""
        queue = self.queue
        while queue:
            request = queue.head(now)
            x = self.inputs[request]
            placement = place_new(x, x + self.outputs[request], self._placement_candidates(),
                                  self.queued_tokens)
            if placement is None:
                return
            queue.pop()
            self.queued_tokens -= x
            worker = placement.worker
            self.builder.prefill_started(now, self.ids[request], worker.job_id)
            if placement.mode == PREFILL:
                worker.assign(request, x)
                if not worker.busy:
                    self._start_batch(now, worker)
            else:
                worker.advance(now)
                worker.reserve(x + self.outputs[request])
                worker.assign_prefill(request, x)
                self._reschedule(worker)

    def _placement_candidates(self) -> list[Prefiller | Decoder]:
        """The workers place_new can pick: with a prefiller accepting, only prefillers and
        convertibles (plain decoders are its choice only when no prefiller is ready)."""
        if any(p.accepting for p in self.prefillers):
            return self.prefillers + self.convertibles
        return self.workers

    def _start_batch(self, now: float, prefiller: Prefiller) -> None:
        duration = prefiller.start_batch()
        if prefiller.busy:
            self._push(now + duration, PREFILL_DONE, prefiller, None)

    def _prefill_done(self, now: float, prefiller: Prefiller) -> None:
        if self.cluster.jobs[prefiller.job_id].state == ENDED:
            return
        for request in prefiller.batch_done:
            prefiller.release(self.inputs[request])
            self.builder.prefill_finished(now, self.ids[request])
            self.decode_wait.push((request, prefiller), self.ttft_deadlines[request])
        prefiller.batch_done = []
        self._start_batch(now, prefiller)
        self._admit_decodes(now)
        self._dispatch(now)
        self._end_if_drained(now, prefiller)

    def _admit_decodes(self, now: float) -> None:
        """Prefilled requests pull their KV to a decoder in the broker's order while one has room."""
        waiting = self.decode_wait
        while waiting:
            request, prefiller = waiting.head(now)
            need = self.inputs[request] + self.outputs[request]
            decoder = place_decode(need, self.decoders)
            if decoder is None:
                return
            waiting.pop()
            decoder.reserve(need)
            x = self.inputs[request]
            alive = prefiller is not None and self.cluster.jobs[prefiller.job_id].state != ENDED
            arrives = prefiller.send_kv(now, x) if alive else \
                now + kv_transfer_seconds(x, self.partition.velocities)
            self._push(arrives, TRANSFER_DONE, request, decoder)

    def _transfer_done(self, now: float, request: int, decoder: Decoder) -> None:
        if self.cluster.jobs[decoder.job_id].state == ENDED:
            return
        decoder.advance(now)
        self._start_decode(now, request, decoder)
        self._reschedule(decoder)

    def _start_decode(self, now: float, request: int, decoder: Decoder) -> None:
        self.outcomes.first_token_s[request] = now
        self.builder.first_token(now, self.ids[request])
        if self.outputs[request] <= 1:
            self._finish(now, request, decoder)
        else:
            decoder.join(request, self.inputs[request], self.outputs[request])

    def _decoder_event(self, now: float, decoder: Decoder, version: int) -> None:
        if version != decoder.version or self.cluster.jobs[decoder.job_id].state == ENDED:
            return
        decoder.advance(now)
        for request in decoder.take_prefilled():
            decoder.prefill_tokens -= self.inputs[request]
            self.builder.prefill_finished(now, self.ids[request])
            self._start_decode(now, request, decoder)
        for request in decoder.take_finished():
            self._finish(now, request, decoder)
        self._reschedule(decoder)
        self._admit_decodes(now)
        self._dispatch(now)
        self._end_if_drained(now, decoder)

    def _finish(self, now: float, request: int, decoder: Decoder) -> None:
        self.outcomes.finish_s[request] = now
        self.outcomes.status[request] = SERVED
        decoder.release(self.inputs[request] + self.outputs[request])
        self.builder.finished(now, self.ids[request], self.outputs[request])
        self.open -= 1

    def _reschedule(self, decoder: Decoder) -> None:
        decoder.version += 1
        at = decoder.next_event_at()
        if at is not None:
            self._push(at, DECODER, decoder, decoder.version)

    # ---- jobs --------------------------------------------------------------------------------

    def _warm_start(self) -> None:
        pools = self.profile.pools
        for role, bounds in (("prefill", pools.prefill), ("decode", pools.decode),
                             ("convertible", pools.convertible)):
            for _ in range(bounds.min):
                job = self.cluster.initial(0.0, role, self.partition)
                self.builder.job_submitted(0.0, job.job_id, role, self.partition.name)
                self.builder.job_started(0.0, job.job_id, ends_at=job.ends_at)
                self._push(job.ends_at, JOB_LIMIT, job, None)
                self._make_ready(0.0, job)

    def _submit(self, now: float, role: str, partition: Partition) -> None:
        job, starts_at = self.cluster.submit(now, role, partition)
        self.builder.job_submitted(now, job.job_id, role, partition.name)
        self._push(starts_at, JOB_START, job, None)

    def _job_start(self, now: float, job: Job) -> None:
        if job.state != PENDING:
            return
        ready_at = self.cluster.start(job, now)
        self.builder.job_started(now, job.job_id, ends_at=job.ends_at)
        self._push(ready_at, JOB_READY, job, None)
        self._push(job.ends_at, JOB_LIMIT, job, None)

    def _job_ready(self, now: float, job: Job) -> None:
        if job.state != STARTING:
            return
        self._make_ready(now, job)
        self._admit_decodes(now)
        self._dispatch(now)

    def _make_ready(self, now: float, job: Job) -> None:
        velocities = job.partition.velocities
        if job.role == "prefill":
            worker: Prefiller | Decoder = Prefiller(job.job_id, velocities, self.absorb,
                                                    self.max_batch)
        else:
            worker = Decoder(job.job_id, ROLE_OF_WORKER[job.role], velocities,
                             self.profile.engine.convertible_prefill_cap_tokens, self.chunk)
            worker.updated_at = now
        job.worker, job.state, job.ready_at = worker, READY, now
        self.workers.append(worker)
        self._by_role(worker).append(worker)
        if job.role == "convertible":
            self.decoders.append(worker)
        self.builder.job_ready(now, job.job_id, velocities.kv_capacity_tokens)

    def _by_role(self, worker: Prefiller | Decoder) -> list:
        if isinstance(worker, Prefiller):
            return self.prefillers
        return self.convertibles if worker.role == "convertible" else self.decoders

    def _end(self, now: float, job: Job) -> None:
        worker = job.worker
        if worker is not None and worker in self.workers:
            self.workers.remove(worker)
            self._by_role(worker).remove(worker)
            if worker in self.decoders:
                self.decoders.remove(worker)
        self.cluster.end(job, now)
        self.builder.job_ended(now, job.job_id)

    def _end_if_drained(self, now: float, worker: Prefiller | Decoder) -> None:
        job = self.cluster.jobs[worker.job_id]
        if job.state == DRAINING and worker.idle:
            self._end(now, job)

    def _kill(self, now: float, job: Job) -> None:
        """Slurm ends the job now: whatever its worker holds is lost."""
        worker = job.worker
        self._end(now, job)
        for request in self._held_by(worker):
            if self.outcomes.status[request] == 0:
                self.outcomes.status[request] = KILLED
                self.builder.dropped(now, self.ids[request])
                self.open -= 1

    def _held_by(self, worker: Prefiller | Decoder | None) -> list[int]:
        if isinstance(worker, Prefiller):
            return [r for r, _ in worker.queue] + worker.batch_done
        if isinstance(worker, Decoder):
            held = [r for r, _ in worker.prefilling] + [r for _, r, _ in worker.finishing]
            pending = [e[3] for e in self.heap if e[2] == TRANSFER_DONE and e[4] is worker]
            return held + pending
        return []

    # ---- the policy --------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._report_workers(now)
        snapshot = self.builder.snapshot(now)
        step = self.runner.step(snapshot)
        self.decisions.append((now, step.decision.targets))
        if self.config.record_snapshots:
            self.steps.append((snapshot, step))
        for action in step.actions:
            self._apply(now, action)
        if now >= len(self.timeline.time_s) * self.config.sample_s:
            self._sample(now)
        if self.progress is not None:
            self.progress(now)
        self._push(now + self.profile.broker.tick_s, TICK, None, None)

    def _report_workers(self, now: float) -> None:
        tick = self.profile.broker.tick_s
        for worker in self.workers:
            if isinstance(worker, Decoder):
                worker.advance(now)
                last = self.generated_at_tick.get(worker.job_id, worker.generated)
                self.generated_at_tick[worker.job_id] = worker.generated
                self.builder.worker_stats(now, worker.job_id, worker.kv_used_tokens,
                                          (worker.generated - last) / tick)

    def _apply(self, now: float, action: Action) -> None:
        if isinstance(action, Submit):
            partition = self.profile.partition(action.partition)
            for _ in range(action.count):
                self._submit(now, action.role, partition)
            return
        job = self.cluster.jobs.get(action.job_id)
        if job is None or job.state == ENDED:
            return
        if isinstance(action, Drain) and job.state == READY:
            job.state = DRAINING
            job.worker.accepting = False
            self.builder.job_draining(now, job.job_id)
            self._end_if_drained(now, job.worker)
        elif isinstance(action, (Cancel, Drain)) and job.state in (PENDING, STARTING):
            self.cluster.cancelled += 1
            self._end(now, job)
        elif isinstance(action, Cancel):
            self.cluster.cancelled += 1
            self._kill(now, job)

    def _sample(self, now: float) -> None:
        self.timeline.time_s.append(now)
        index = {READY: 0, STARTING: 1, PENDING: 2, DRAINING: 3}
        counts = {role: [0, 0, 0, 0] for role in ROLE_OF_WORKER}
        for job in self.cluster.jobs.values():
            if job.state != ENDED:
                counts[job.role][index[job.state]] += 1
        for role, values in counts.items():
            self.timeline.counts[role].append(values)
        ready_prefill = counts["prefill"][0] * min(self.partition.velocities.prefill_tokens_per_s,
                                                   self.partition.velocities.kv_transfer_tokens_per_s)
        self.timeline.ready_prefill_tokens_per_s.append(float(ready_prefill))

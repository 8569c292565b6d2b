"""The simulated Slurm cluster: each job's life cycle per partition and what it costs.

pending (queue wait drawn from the partition's distribution, one seeded stream per partition)
-> starting (model load) -> ready (serving) -> draining (no new work; ends when idle) -> ended.
Slurm ends a job at its time limit whatever it is doing. Cost is what a Slurm account is charged:
GPUs x (end - start), model load included, queue wait not. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tsslurm.profile.schema import Partition, QueueWait

PENDING, STARTING, READY, DRAINING, ENDED = "pending", "starting", "ready", "draining", "ended"


@dataclass
class Job:
    job_id: str
    role: str
    partition: Partition
    submitted_at: float
    state: str = PENDING
    started_at: float | None = None
    ready_at: float | None = None
    ended_at: float | None = None
    worker: object | None = None
    initial: bool = False

    @property
    def ends_at(self) -> float | None:
        """Slurm's time limit for a started job."""
        if self.started_at is None:
            return None
        return self.started_at + self.partition.time_limit_s

    def gpu_seconds(self, until: float, since: float = 0.0) -> float:
        """GPU time billed between `since` and `until` (the job's end, if earlier)."""
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else until
        return self.partition.gpus_per_instance * max(0.0, end - max(self.started_at, since))


@dataclass
class QueueWaits:
    """Queue waits per partition: a seeded stream each, so a policy's k-th job on a partition
    waits the same whatever other partitions see. `scale` 0 gives BlitzScale's ideal start."""

    seed: int
    scale: float = 1.0
    streams: dict[str, np.random.Generator] = field(default_factory=dict)

    def draw(self, partition: Partition) -> float:
        stream = self.streams.get(partition.name)
        if stream is None:
            key = sum(ord(ch) * 31 ** i for i, ch in enumerate(partition.name)) % (2 ** 31)
            stream = self.streams[partition.name] = np.random.default_rng([self.seed, key])
        return self.scale * sample_wait(partition.queue_wait, stream)


def sample_wait(wait: QueueWait, stream: np.random.Generator) -> float:
    if wait.distribution == "fixed" or wait.mean_s == 0:
        return wait.mean_s
    if wait.distribution == "exponential":
        return float(stream.exponential(wait.mean_s))
    mu = math.log(wait.mean_s) - wait.sigma ** 2 / 2
    return float(stream.lognormal(mu, wait.sigma))


class Cluster:
    """Every job the run created, by id, with the counters the report needs."""

    def __init__(self, waits: QueueWaits, load_scale: float = 1.0):
        self.waits = waits
        self.load_scale = load_scale
        self.jobs: dict[str, Job] = {}
        self.submitted = 0
        self.cancelled = 0
        self.timed_out = 0

    def submit(self, now: float, role: str, partition: Partition) -> tuple[Job, float]:
        """A new pending job and when it starts."""
        self.submitted += 1
        job = self._new(now, role, partition)
        return job, now + self.waits.draw(partition)

    def initial(self, now: float, role: str, partition: Partition) -> Job:
        """A job already loaded when the run starts (the pools' minimum, warm)."""
        job = self._new(now, role, partition)
        job.initial = True
        job.state, job.started_at, job.ready_at = READY, now, now
        return job

    def _new(self, now: float, role: str, partition: Partition) -> Job:
        job = Job(f"sim-{len(self.jobs) + 1}", role, partition, now)
        self.jobs[job.job_id] = job
        return job

    def start(self, job: Job, now: float) -> float:
        """The job runs; returns when its engine is loaded."""
        job.state, job.started_at = STARTING, now
        return now + self.load_scale * job.partition.model_load_s

    def end(self, job: Job, now: float) -> None:
        job.state, job.ended_at = ENDED, now

    def gpu_seconds(self, until: float, since: float = 0.0) -> float:
        return sum(job.gpu_seconds(until, since) for job in self.jobs.values())

    def live(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.state != ENDED]

"""A partition's queue wait from Slurm's own record of its recent jobs: the waits (submit, or
eligible when later, to start) sacct reports, with jobs still pending or cancelled while pending
counted as censored waits, fitted to one of the distributions a profile can hold.

`waits_from_history` and `fit_queue_wait` are pure (no I/O, no clock); `queue_wait_from_slurm`
asks the Slurm adapter and turns every way accounting can be missing into a note, never an error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from tsslurm.profile.schema import QueueWait
from tsslurm.slurm.adapter import SlurmAdapter, SlurmError
from tsslurm.slurm.parse import JobTimes

MIN_STARTED_JOBS = 5
"""Fewer started jobs than this say too little about a partition's queue."""
CLOCK_RESOLUTION_S = 1.0
"""sacct's timestamps are whole seconds: a wait of 0 s lasted between 0 and 1 s."""
FIXED_SPREAD_S = 2.0
"""Waits that all lie within this many seconds of each other are a fixed wait, not a spread."""


class Waits(msgspec.Struct, frozen=True):
    observed: list[float]
    """Seconds from submit (or eligibility) to start, for jobs that started."""
    censored: list[float]
    """Seconds waited so far by jobs still pending, or until cancelled while pending."""
    skipped: int = 0
    """Jobs that never became eligible (held, future --begin) or failed at submission."""


class QueueWaitFit(msgspec.Struct, frozen=True):
    queue_wait: QueueWait | None
    """None: too little evidence; the profile keeps its value."""
    note: str


def waits_from_history(jobs: Sequence[JobTimes], now: datetime) -> Waits:
    observed: list[float] = []
    censored: list[float] = []
    skipped = 0
    for job in jobs:
        ready = _ready_at(job)
        if ready is None:
            skipped += 1
        elif job.ran and job.start is not None and job.start >= ready:
            observed.append((job.start - ready).total_seconds())
        elif not job.ran and job.state == "PENDING" and now >= ready:
            censored.append((now - ready).total_seconds())
        elif not job.ran and job.state == "CANCELLED" and job.end is not None and job.end >= ready:
            censored.append((job.end - ready).total_seconds())
        else:
            skipped += 1
    return Waits(observed, censored, skipped)


def _ready_at(job: JobTimes) -> datetime | None:
    """When the job began to wait for the partition: eligible (if later than submit)."""
    if job.submit is None or job.eligible is None:
        return None
    return max(job.submit, job.eligible)


def fit_queue_wait(waits: Waits) -> QueueWaitFit:
    """fixed, exponential or lognormal, whichever describes the started jobs' waits best (AIC,
    both fitted to those waits); the exponential's mean then counts the censored waits too (its
    maximum-likelihood estimate with right-censoring)."""
    started, censored = waits.observed, waits.censored
    evidence = f"{len(started)} started jobs, {len(censored)} censored"
    if len(started) < MIN_STARTED_JOBS:
        return QueueWaitFit(None, f"{evidence}: fewer than {MIN_STARTED_JOBS} started jobs")
    mean = sum(started) / len(started)
    if max(started) - min(started) <= FIXED_SPREAD_S:
        return QueueWaitFit(QueueWait(distribution="fixed", mean_s=round(mean, 2)),
                            f"{evidence}; waits within {FIXED_SPREAD_S:g} s: fixed")
    exp_mean = (sum(started) + sum(censored)) / len(started)
    shifted = [wait + CLOCK_RESOLUTION_S / 2 for wait in started]
    mu, sigma = _lognormal_mle(shifted)
    aic_exp = 2 - 2 * _exponential_loglik(shifted, sum(shifted) / len(shifted))
    aic_log = 4 - 2 * _lognormal_loglik(shifted, mu, sigma)
    if aic_exp <= aic_log or sigma <= 0:
        return QueueWaitFit(QueueWait(distribution="exponential", mean_s=round(exp_mean, 2)),
                            f"{evidence}; exponential (AIC {aic_exp:.1f} vs lognormal "
                            f"{aic_log:.1f})")
    log_mean = math.exp(mu + sigma ** 2 / 2) - CLOCK_RESOLUTION_S / 2
    fitted = QueueWait(distribution="lognormal", mean_s=round(max(log_mean, 0.0), 2),
                       sigma=round(sigma, 3))
    return QueueWaitFit(fitted, f"{evidence}; lognormal (AIC {aic_log:.1f} vs exponential "
                                f"{aic_exp:.1f}); censored waits not used by this fit")


def _exponential_loglik(values: Sequence[float], mean: float) -> float:
    return -len(values) * math.log(mean) - sum(values) / mean


def _lognormal_mle(values: Sequence[float]) -> tuple[float, float]:
    logs = [math.log(v) for v in values]
    mu = sum(logs) / len(logs)
    return mu, math.sqrt(sum((x - mu) ** 2 for x in logs) / len(logs))


def _lognormal_loglik(values: Sequence[float], mu: float, sigma: float) -> float:
    if sigma <= 0:
        return -math.inf
    return sum(-math.log(v * sigma * math.sqrt(2 * math.pi)) - (math.log(v) - mu) ** 2
               / (2 * sigma ** 2) for v in values)


def queue_wait_from_slurm(adapter: SlurmAdapter, partition: str, days: float,
                          now: datetime) -> QueueWaitFit:
    """Fit the partition's queue wait from sacct over the last `days`, through the adapter; a
    cluster without accounting (or unreachable) gives a note saying so and no fit."""
    try:
        if not adapter.has_accounting:
            storage = adapter.config().get("AccountingStorageType", "unknown")
            return QueueWaitFit(None, f"Slurm accounting is not available on this cluster "
                                      f"(AccountingStorageType={storage}): no job history")
        jobs = adapter.job_history(partition, now - timedelta(days=days))
    except SlurmError as error:
        return QueueWaitFit(None, f"could not read Slurm's job history: {error}")
    waits = waits_from_history(jobs, now)
    fit = fit_queue_wait(waits)
    where = f"sacct, partition {partition}, last {days:g} days: "
    return QueueWaitFit(fit.queue_wait, where + fit.note)

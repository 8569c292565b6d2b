"""Queue wait from Slurm's record: waits read from sacct output recorded on the dev cluster (a
started job, one that waited for GPUs, pending and cancelled-while-pending jobs as censored
waits, held and future jobs skipped), and the distribution fitted to seeded samples."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tsslurm.profiler.queue_wait import (
    MIN_STARTED_JOBS,
    Waits,
    fit_queue_wait,
    queue_wait_from_slurm,
    waits_from_history,
)
from tsslurm.slurm.adapter import SlurmAdapter
from tsslurm.slurm.parse import parse_sacct_history

pytestmark = pytest.mark.timeout(30)

RECORDED = Path(__file__).parents[1] / "data" / "slurm" / "accounting" / "sacct_history.txt"
RECORDED_AT = datetime(2026, 11, 22, 5, 40, 1)


def test_the_recorded_history_parses() -> None:
    jobs = {job.name.removeprefix("rec-"): job for job in parse_sacct_history(RECORDED.read_text())}
    assert jobs["gpus-waited"].ran and jobs["gpus-waited"].state == "COMPLETED"
    assert not jobs["gpus-pending"].ran and jobs["gpus-pending"].start is None
    assert jobs["held-cancelled"].eligible is None
    assert not jobs["gpus-pending"].ran and jobs["gpus-pending"].state == "PENDING"
    assert {job.partition for job in jobs.values()} == {"spare"}


def test_waits_from_the_recorded_history() -> None:
    waits = waits_from_history(parse_sacct_history(RECORDED.read_text()), RECORDED_AT)
    assert sorted(waits.observed) == [0.0, 0.0, 0.0, 1.0, 7.0], \
        "completed, gpus-first, blocker2 at once, blocker after 1 s, gpus-waited behind gpus-first"
    assert sorted(waits.censored) == [2.0, 3.0, 10.0], \
        "cancelled while pending after 2 s and 3 s; still pending 10 s at the recording"
    assert waits.skipped == 2, "held, and eligible only after it was cancelled: no queue wait"


def test_a_job_cancelled_before_it_was_eligible_is_skipped() -> None:
    line = ("1113|CANCELLED by 0|spare|None assigned|2026-11-22T05:39:23|2026-11-22T05:49:23|"
            "None|2026-11-22T05:39:33|rec-begin-later\n")
    waits = waits_from_history(parse_sacct_history(line), RECORDED_AT)
    assert waits == Waits([], [], 1)


def test_too_few_started_jobs_keep_the_profile_value() -> None:
    fit = fit_queue_wait(Waits([3.0] * (MIN_STARTED_JOBS - 1), [100.0]))
    assert fit.queue_wait is None and "fewer than" in fit.note


def test_waits_within_the_clock_resolution_are_fixed() -> None:
    fit = fit_queue_wait(Waits([0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0], []))
    assert fit.queue_wait is not None
    assert fit.queue_wait.distribution == "fixed"
    assert fit.queue_wait.mean_s == pytest.approx(0.375, abs=0.01)


def test_exponential_waits_are_fitted_as_exponential() -> None:
    rng = np.random.default_rng(11)
    waits = np.floor(rng.exponential(120.0, 400)).tolist()
    fit = fit_queue_wait(Waits(waits, []))
    assert fit.queue_wait is not None and fit.queue_wait.distribution == "exponential"
    assert fit.queue_wait.mean_s == pytest.approx(120.0, rel=0.12)


def test_lognormal_waits_are_fitted_as_lognormal() -> None:
    rng = np.random.default_rng(12)
    sigma, mean = 1.5, 300.0
    mu = np.log(mean) - sigma ** 2 / 2
    waits = np.floor(rng.lognormal(mu, sigma, 400)).tolist()
    fit = fit_queue_wait(Waits(waits, []))
    assert fit.queue_wait is not None and fit.queue_wait.distribution == "lognormal"
    assert fit.queue_wait.sigma == pytest.approx(sigma, rel=0.12)
    assert fit.queue_wait.mean_s == pytest.approx(mean, rel=0.3)


def test_censored_waits_raise_the_exponential_mean() -> None:
    rng = np.random.default_rng(13)
    started = np.floor(rng.exponential(60.0, 200)).tolist()
    plain = fit_queue_wait(Waits(started, []))
    censored = fit_queue_wait(Waits(started, [600.0] * 20))
    assert plain.queue_wait is not None and censored.queue_wait is not None
    assert censored.queue_wait.distribution == "exponential"
    assert censored.queue_wait.mean_s == pytest.approx(
        plain.queue_wait.mean_s + 20 * 600.0 / 200, rel=1e-6)


class ClusterWithoutAccounting:
    """What the adapter says of a cluster without slurmdbd (the dev cluster's --no-accounting)."""

    has_accounting = False

    def config(self) -> dict[str, str]:
        return {"AccountingStorageType": "accounting_storage/none"}

    def job_history(self, partition: str, since: datetime) -> list:
        raise AssertionError("sacct has no history to give without accounting")


def test_without_accounting_the_fit_says_so_and_keeps_the_profile_value() -> None:
    cluster: Any = ClusterWithoutAccounting()
    fit = queue_wait_from_slurm(cluster, "a100", 14, RECORDED_AT)
    assert fit.queue_wait is None
    assert fit.note == ("Slurm accounting is not available on this cluster "
                        "(AccountingStorageType=accounting_storage/none): no job history")


def test_an_unreachable_slurm_gives_a_note_not_an_error(tmp_path: Path) -> None:
    adapter = SlurmAdapter.for_conf(tmp_path / "missing-slurm.conf")
    fit = queue_wait_from_slurm(adapter, "a100", 14, RECORDED_AT)
    assert fit.queue_wait is None
    assert fit.note.startswith("could not read Slurm's job history: `scontrol show config` failed")
    assert "missing-slurm.conf does not exist" in fit.note

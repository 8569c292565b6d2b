"""`tsslurm profile` against the real cluster, where things go wrong: a partition Slurm does not
have, a job that fails before Python runs, a job cancelled while it runs, an engine that cannot
start in the job. Each ends with one clear message naming the job and its log, no traceback. And
the queue-wait history the profiler reads through the adapter (real sacct, slurmdbd)."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from profiler_helpers import cluster_env, profile_argv, run_profile, tiny_profile_file
from slurm_helpers import partition, shell_job, wait_for

from tsslurm.profiler.queue_wait import queue_wait_from_slurm, waits_from_history
from tsslurm.slurm.parse import FINAL_STATES

pytestmark = pytest.mark.timeout(120)


def assert_clear_failure(done: subprocess.CompletedProcess[str], *messages: str) -> None:
    assert done.returncode == 1, done.stderr
    for message in messages:
        assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_partition_slurm_does_not_have(slurm, tmp_path: Path) -> None:
    profile = tiny_profile_file(tmp_path, tmp_path / "model", name="nope")
    done = run_profile(slurm.conf, profile, "--partition", "nope", "--job-name", slurm.name("p"))
    assert_clear_failure(done, "Slurm has no partition 'nope' (it has: ", "a100")
    assert slurm.adapter.jobs(slurm.prefix) == []


def test_a_job_that_fails_before_python_runs(slurm, tmp_path: Path) -> None:
    broken_setup = ["echo 'module: command not found: cuda/12.4' >&2", "echo 'site setup gave up'",
                    "exit 3"]
    profile = tiny_profile_file(tmp_path, tmp_path / "model", site_lines=broken_setup)
    done = run_profile(slurm.conf, profile, "--quick", "--job-name", slurm.name("fails"))
    job = slurm.adapter.jobs(slurm.prefix)[0]
    assert_clear_failure(done, f"the profiling job {job.job_id} ended FAILED without measurements",
                         "the last lines of its log ",
                         "    module: command not found: cuda/12.4\n    site setup gave up")
    assert job.state == "FAILED"


def test_a_job_cancelled_while_it_runs(slurm, tmp_path: Path) -> None:
    profile = tiny_profile_file(tmp_path, tmp_path / "model", site_lines=["sleep 300"])
    command = subprocess.Popen(profile_argv(profile, "--quick", "--job-name", slurm.name("c")),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cluster_env(slurm.conf))
    try:
        deadline = time.monotonic() + 60
        while not (jobs := slurm.adapter.jobs(slurm.prefix)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert jobs, "the profiling job was never submitted"
        wait_for(slurm.adapter, jobs[0].job_id, {"RUNNING"})
        slurm.adapter.cancel([jobs[0].job_id])
        out, err = command.communicate(timeout=90)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    assert_clear_failure(subprocess.CompletedProcess(command.args, command.returncode, out, err),
                         f"the profiling job {jobs[0].job_id} ended CANCELLED")


def test_an_engine_that_cannot_start_in_the_job(slurm, tmp_path: Path) -> None:
    profile = tiny_profile_file(tmp_path, tmp_path / "no-model-here")
    done = run_profile(slurm.conf, profile, "--quick", "--job-name", slurm.name("nomodel"))
    assert_clear_failure(done, "failed while starting the first engine",
                         f"no model at {tmp_path / 'no-model-here'}: config.json is missing")
    assert profile.read_text() == tiny_profile_file(tmp_path, tmp_path / "no-model-here").read_text()


def test_queue_wait_history_through_the_adapter(slurm, tmp_path: Path) -> None:
    adapter = slurm.adapter
    since = datetime.now() - timedelta(seconds=2)
    ids = [adapter.submit_job(shell_job(slurm.name(f"quick{i}"), partition("cpu"), tmp_path,
                                        "exit 0")) for i in range(3)]
    for job_id in ids:
        wait_for(adapter, job_id, FINAL_STATES, timeout_s=60)
    deadline = time.monotonic() + 30
    while True:
        history = {job.job_id: job for job in adapter.job_history("cpu", since)}
        if set(ids) <= set(history) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(ids) <= set(history), "sacct records every job of ours"
    for job_id in ids:
        job = history[job_id]
        assert job.ran and job.partition == "cpu" and job.name.startswith(slurm.prefix)
        assert job.submit is not None and job.start is not None and job.start >= job.submit
    waits = waits_from_history([history[i] for i in ids], datetime.now())
    assert len(waits.observed) == 3 and all(0 <= wait < 30 for wait in waits.observed)
    fit = queue_wait_from_slurm(adapter, "cpu", days=1, now=datetime.now())
    assert fit.note.startswith("sacct, partition cpu, last 1 days: ")
    assert fit.queue_wait is not None, fit.note
    assert fit.queue_wait.mean_s < 60

"""Real jobs on the real cluster: GPU jobs on both partitions, cancel, and the drain signal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from slurm_helpers import log_of, partition, shell_job, wait_for, wait_for_log

from tsslurm.slurm.parse import FINAL_STATES
from tsslurm.slurm.render import render_job

GPU_SCRIPT = """
echo "host=$(hostname)"
echo "cvd=$CUDA_VISIBLE_DEVICES"
scontrol show job "$SLURM_JOB_ID" | tr ' ' '\\n' | grep -E '^(TRES|TresPerNode)='
sleep 2
"""


@pytest.mark.timeout(90)
def test_gpu_jobs_run_then_complete_on_both_partitions(slurm, tmp_path: Path) -> None:
    adapter = slurm.adapter
    jobs = {}
    for kind in ("a100", "h100"):
        spec = shell_job(slurm.name(kind), partition(kind, gpus=2), tmp_path, GPU_SCRIPT)
        jobs[kind] = (spec, adapter.submit_job(spec))
    for kind, (spec, job_id) in jobs.items():
        running = wait_for(adapter, job_id, {"RUNNING"} | FINAL_STATES, timeout_s=20)
        assert running.partition == kind
    for kind, (spec, job_id) in jobs.items():
        done = wait_for(adapter, job_id, FINAL_STATES, timeout_s=40, accounted=True)
        assert (done.state, done.exit_code) == ("COMPLETED", 0), log_of(spec, job_id)
        assert done.nodes.startswith(f"{kind}-")
        log = log_of(spec, job_id)
        assert f"host={done.nodes}" in log
        devices = log.split("cvd=")[1].split()[0].split(",")
        assert len(devices) == 2 and all(d.isdigit() for d in devices)
        assert f"gres/gpu:{kind}=2" in log and f"gres:gpu:{kind}:2" in log


@pytest.mark.timeout(60)
def test_cancel_a_running_job(slurm, tmp_path: Path) -> None:
    spec = shell_job(slurm.name("sleeper"), partition("cpu"), tmp_path, "echo up; sleep 300")
    job_id = slurm.adapter.submit_job(spec)
    wait_for(slurm.adapter, job_id, {"RUNNING"})
    slurm.adapter.cancel([job_id])
    done = wait_for(slurm.adapter, job_id, FINAL_STATES, timeout_s=20)
    assert done.state == "CANCELLED"
    if done.source == "sacct":
        assert done.cancelled_by == os.getuid()


DRAIN_SCRIPT = """
trap 'echo "drain requested"; exit 0' USR1
echo ready
while true; do sleep 0.1; done
"""


@pytest.mark.timeout(60)
def test_drain_signal_reaches_the_batch_script(slurm, tmp_path: Path) -> None:
    spec = shell_job(slurm.name("drainee"), partition("a100"), tmp_path, DRAIN_SCRIPT)
    job_id = slurm.adapter.submit_job(spec)
    wait_for(slurm.adapter, job_id, {"RUNNING"})
    wait_for_log(spec, job_id, "ready")
    slurm.adapter.cancel([job_id], signal="USR1", batch_only=True)
    done = wait_for(slurm.adapter, job_id, FINAL_STATES, timeout_s=40, accounted=True)
    assert (done.state, done.exit_code) == ("COMPLETED", 0)
    assert "drain requested" in log_of(spec, job_id)


@pytest.mark.timeout(60)
def test_hold_and_release(slurm, tmp_path: Path) -> None:
    adapter = slurm.adapter
    later = shell_job(slurm.name("later"), partition("cpu"), tmp_path, "exit 0")
    job_id = adapter.submit(render_job(later), ["--begin=now+1hour"])
    assert wait_for(adapter, job_id, {"PENDING"}).reason in {"BeginTime", ""}
    adapter.hold([job_id])
    held_reason = wait_for(adapter, job_id, {"PENDING"}).reason
    assert held_reason.startswith("JobHeld")
    adapter.release([job_id])
    assert not wait_for(adapter, job_id, {"PENDING"}).reason.startswith("JobHeld")

    held = shell_job(slurm.name("held"), partition("cpu"), tmp_path, "echo released")
    held_id = adapter.submit(render_job(held), ["--hold"])
    assert wait_for(adapter, held_id, {"PENDING"}).reason == "JobHeldUser"
    adapter.release([held_id])
    done = wait_for(adapter, held_id, FINAL_STATES, timeout_s=40, accounted=True)
    assert (done.state, done.exit_code) == ("COMPLETED", 0)
    assert "released" in log_of(held, held_id)

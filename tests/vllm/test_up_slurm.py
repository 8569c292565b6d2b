"""`tsslurm up --backend slurm` with real vLLM engines: the local-tiny profile on the dev cluster's
cpu partition, one prefiller and one decoder as Slurm jobs. Requests through the client library
take the disaggregated path (prefill in one job, NIXL KV handoff, decode in the other) and give
exactly a plain vLLM engine's greedy tokens; `tsslurm generate` answers a text prompt; `down`
drains and cancels both jobs and leaves nothing in Slurm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from up_support import REPO, counts, live_jobs, ready, slurm_deployments  # noqa: F401
from vllm_helpers import PlainReference, random_prompts

pytestmark = pytest.mark.timeout(600)

PROMPTS = random_prompts(2, (60, 300), seed=21)
MAX_TOKENS = 16


def _profile(model: Path) -> dict:
    data = yaml.safe_load((REPO / "profiles" / "local-tiny.yaml").read_text())
    data["model"]["path"] = str(model)
    part = data["partitions"][0]
    part.update(name="cpu", gres="", template="cpu.sbatch")
    data["pools"] = {"prefill": {"min": 1, "max": 1}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 0}}
    return data


def test_up_on_slurm_serves_real_vllm_and_down_leaves_no_job(
        slurm, slurm_deployments, tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    reference = PlainReference(tiny_model, PROMPTS, MAX_TOKENS, tmp_path)
    try:
        d = slurm_deployments(_profile(tiny_model))
        d.start(timeout_s=120)
        status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s),
                        "a prefiller and a decoder with their engines loaded", 360, 1.0)
        assert {j.partition for j in status.jobs} == {"cpu"}
        jobs = {j.job_id for j in status.jobs}
        assert jobs == {j.job_id for j in live_jobs(slurm)}, "the deployment's jobs are Slurm's"
        expected = reference.outputs()
    finally:
        reference.kill()

    with d.sync_client(timeout_s=180) as client:
        answers = [client.generate(prompt, MAX_TOKENS, request_id=f"p{i}").token_ids
                   for i, prompt in enumerate(PROMPTS)]
    assert answers == expected
    generated = d.cli("generate", "Once upon a time", "--max-tokens", "8", timeout_s=180)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr
    records = d.records(len(PROMPTS) + 1)
    assert len(records) == len(PROMPTS) + 1
    assert {r.path for r in records} == {"disaggregated"} and all(r.outcome == "ok"
                                                                  for r in records)

    done = d.down(timeout_s=240)
    assert done.returncode == 0, done.stderr
    assert d.status().phase == "stopped" and not d.status().jobs
    assert not live_jobs(slurm), "down left a job of the deployment in Slurm"
    ended = {e["job_id"] for e in d.events("job") if e["new"] == "ended"}
    assert ended == jobs

"""`tsslurm replay` against a live deployment of mock engines running as Slurm jobs on the dev
cluster: every request of a 40 s trace is answered, the report has `tsslurm simulate`'s shape and
bills the deployment's jobs; a broker killed mid-replay gives a clear error and partial results."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from up_support import REPO, slurm_deployments  # noqa: F401 (a fixture)

from tsslurm.sim import synthetic
from tsslurm.sim.trace import Trace

pytestmark = pytest.mark.timeout(240)


def emulation_profile() -> dict:
    data = yaml.safe_load((REPO / "profiles" / "emulation-mock.yaml").read_text())
    data["pools"] = {"prefill": {"min": 1, "max": 2}, "decode": {"min": 1, "max": 1},
                     "convertible": {"min": 0, "max": 1}}
    data["broker"]["tick_s"] = 0.5
    return data


def azure_csv(trace: Trace, path: Path) -> Path:
    start = np.datetime64("2023-11-16T18:00:00", "ns")
    stamps = start + (trace.arrival_s * 1e9).astype("timedelta64[ns]")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [
        f"{str(s).replace('T', ' ')},{x},{o}"
        for s, x, o in zip(stamps, trace.input_tokens, trace.output_tokens)]
    path.write_text("\n".join(lines) + "\n")
    return path


def small_trace(tmp_path: Path, count: int = 80) -> Path:
    trace = synthetic.poisson(2.0, count, seed=21, max_input=4000, max_output=120)
    return azure_csv(trace, tmp_path / "trace.csv")


def test_replay_answers_every_request_and_reports_like_simulate(
        slurm_deployments, tmp_path: Path) -> None:  # noqa: F811
    d = slurm_deployments(emulation_profile())
    d.start()
    trace = small_trace(tmp_path)
    out = tmp_path / "replay.json"
    done = d.cli("replay", "--trace", str(trace), "--json", str(out), timeout_s=200)
    assert done.returncode == 0, done.stderr[-3000:] + d.log()[-3000:]
    report = json.loads(out.read_text())
    figures = report["policies"]["tokenscale"]
    assert figures["requests_served"] == report["requests"] == 80
    assert figures["requests_unfinished"] == figures["requests_killed"] == 0
    assert figures["ttft_p50_ms"] > 0 and figures["tpot_p50_ms"] > 0
    span_h = figures["run_s"] / 3600
    assert 2 * span_h * 0.5 <= figures["gpu_hours"] <= 4 * span_h * 1.1  # the min pool .. max
    assert len(d.records(80)) >= 80

    simulated = tmp_path / "simulate.json"
    sim = subprocess.run([str(Path(d.command()[0])), "simulate", "--trace", str(trace),
                          "--profile", str(d.profile), "--policy", "tokenscale", "--json",
                          str(simulated), "--quiet"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert sim.returncode == 0, sim.stderr
    expected = json.loads(simulated.read_text())
    assert set(expected) <= set(report)
    assert set(expected["policies"]["tokenscale"]) == set(figures)
    assert set(expected["oracle"]) == set(report["oracle"])


def test_a_broker_killed_mid_replay_is_a_clear_error_with_partial_results(
        slurm_deployments, tmp_path: Path) -> None:  # noqa: F811
    d = slurm_deployments(emulation_profile())
    d.start()
    trace = small_trace(tmp_path, count=60)
    out = tmp_path / "replay.json"
    replaying = subprocess.Popen(d.command("replay", "--trace", str(trace), "--json", str(out),
                                           "--quiet"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=d.env)
    time.sleep(8)
    d.kill9()
    _, stderr = replaying.communicate(timeout=150)
    assert replaying.returncode == 1, stderr
    assert "stopped answering" in stderr and "Traceback" not in stderr
    report = json.loads(out.read_text())
    assert report["replay"]["partial"] is True
    figures = report["policies"]["tokenscale"]
    assert figures["requests_served"] > 0
    assert figures["requests_served"] + figures["requests_unfinished"] + \
        figures["requests_killed"] == 60

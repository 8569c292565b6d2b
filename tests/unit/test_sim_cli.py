"""`tsslurm simulate` end to end in a subprocess: the JSON fields other tools read, the plot, and
bad input (unknown format, empty trace, bad window, bad profile, bad policy) as one clear line with
exit code 1 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tsslurm.sim import synthetic

pytestmark = pytest.mark.timeout(180)
POLICY_FIELDS = {"slo_attainment", "ttft_attainment", "tpot_attainment", "gpu_hours", "requests",
                 "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "jobs_submitted",
                 "jobs_cancelled", "cost_vs_oracle", "cost_vs_oracle_startup"}


def tsslurm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from tsslurm.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=170, check=False)


def azure_csv(path: Path, seconds: float = 300.0) -> Path:
    trace = synthetic.bursty(2.0, 15.0, 120.0, 10.0, seconds, seed=4)
    start = np.datetime64("2023-11-16T18:00:00", "ns")
    stamps = start + (trace.arrival_s * 1e9).astype("timedelta64[ns]")
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [
        f"{str(s).replace('T', ' ')},{x},{o}"
        for s, x, o in zip(stamps, trace.input_tokens, trace.output_tokens)]
    path.write_text("\n".join(lines))
    return path


def test_simulate_writes_the_json_fields_and_the_plot(tmp_path: Path) -> None:
    trace = azure_csv(tmp_path / "az.csv")
    out, plot = tmp_path / "out" / "r.json", tmp_path / "r.png"
    done = tsslurm("simulate", "--trace", str(trace), "--profile", "llama3-8b-a100",
                   "--policy", "static,aibrix", "--seeds", "2", "--window", "0:240",
                   "--json", str(out), "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["policies"]) == {"static", "aibrix"}
    for figures in report["policies"].values():
        assert POLICY_FIELDS <= set(figures)
        assert 0.0 <= figures["slo_attainment"] <= 1.0
        assert figures["seeds"] == 2
    assert report["oracle"]["gpu_hours"] > 0
    assert report["oracle_startup"]["gpu_hours"] >= report["oracle"]["gpu_hours"]
    assert report["seeds"] == [0, 1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "oracle_startup" in done.stdout


@pytest.mark.parametrize("case, message", [
    ("unknown-format", "unknown trace format"),
    ("empty", "is empty"),
    ("bad-window", "bad window"),
    ("empty-window", "holds no request"),
    ("bad-profile", "invalid profile"),
    ("bad-policy", "cannot be used"),
    ("bad-scale", "bad rate scale"),
])
def test_bad_input_is_one_clear_error(tmp_path: Path, case: str, message: str) -> None:
    trace = azure_csv(tmp_path / "az.csv", 60.0)
    profile, policy, extra = "llama3-8b-a100", "static", []
    if case == "unknown-format":
        trace.write_text("when,prompt,answer\n1,2,3\n")
    elif case == "empty":
        trace.write_text("")
    elif case == "bad-window":
        extra = ["--window", "90:30"]
    elif case == "empty-window":
        extra = ["--window", "5000:6000"]
    elif case == "bad-profile":
        profile = str(tmp_path / "p.yaml")
        Path(profile).write_text("deployment: x\nmodel: {name: m}\npartitions: []\n")
    elif case == "bad-policy":
        policy = "no-such-policy"
    elif case == "bad-scale":
        extra = ["--scale", "-2"]
    done = tsslurm("simulate", "--trace", str(trace), "--profile", profile, "--policy", policy,
                   "--json", str(tmp_path / "r.json"), "--quiet", *extra)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "r.json").exists()

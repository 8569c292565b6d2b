"""`tsslurm replay` refuses bad input before sending anything: one clear line, exit code 1, no
traceback (a bad speedup, scale or window, an unreadable trace, no deployment named, no
deployment where it points)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_sim_cli import azure_csv

pytestmark = pytest.mark.timeout(120)


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from tsslurm.cli import main; main()", "replay",
                           *args], capture_output=True, text=True, timeout=100, check=False)


@pytest.mark.parametrize(("extra", "message"), [
    (["--speedup", "0"], "bad --speedup"),
    (["--scale", "-2"], "bad --scale"),
    (["--window", "10"], "bad window"),
    (["--window", "5000:6000"], "holds no request"),
    ([], "no deployment at"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, extra: list[str], message: str) -> None:
    trace = azure_csv(tmp_path / "az.csv")
    done = replay("--trace", str(trace), "--state-dir", str(tmp_path / "none"), "--json",
                  str(tmp_path / "out.json"), *extra)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out.json").exists()


def test_a_missing_trace_or_deployment_is_named(tmp_path: Path) -> None:
    done = replay("--trace", str(tmp_path / "missing.csv"), "--state-dir", str(tmp_path),
                  "--json", str(tmp_path / "out.json"))
    assert done.returncode == 1 and "cannot read trace" in done.stderr
    trace = azure_csv(tmp_path / "az.csv")
    done = replay("--trace", str(trace), "--json", str(tmp_path / "out.json"))
    assert done.returncode == 1 and "--state-dir DIR or --profile P" in done.stderr

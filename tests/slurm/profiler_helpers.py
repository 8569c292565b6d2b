"""Helpers of the profiler's Slurm tests: a profile of the tiny model for one test (its own
deployment name, state directory and partition lines) and `tsslurm profile` run as a user would
run it, against the test cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tsslurm.profile.load import PROFILE_DIR

TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def tiny_profile_file(root: Path, model: Path, **partition: Any) -> Path:
    """local-tiny.yaml, comments and all, with this test's model, deployment, state directory
    and partition fields; written to root/profile.yaml."""
    text = (PROFILE_DIR / "local-tiny.yaml").read_text()
    text = text.replace("  path: ~/.cache/tsslurm/models/tiny-llama", f"  path: {model}", 1)
    text = text.replace("deployment: local-tiny", f"deployment: profiled\nstate_dir: {root}/state", 1)
    if partition:
        data = yaml.safe_load(text)
        data["partitions"][0].update(partition)
        text = yaml.safe_dump(data, sort_keys=False)
    path = root / "profile.yaml"
    path.write_text(text)
    return path


def profile_argv(profile: Path, *args: str) -> list[str]:
    return [TSSLURM, "profile", "-p", str(profile), *args]


def run_profile(conf: Path, profile: Path, *args: str,
                timeout_s: float = 540) -> subprocess.CompletedProcess[str]:
    """`tsslurm profile` against the cluster of `conf`; its exit code, stdout and stderr."""
    return subprocess.run(profile_argv(profile, *args), capture_output=True, text=True,
                          check=False, timeout=timeout_s, env=cluster_env(conf))


def cluster_env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(conf)}

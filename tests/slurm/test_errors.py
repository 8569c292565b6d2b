"""Bad input on the real cluster: sbatch's refusals become SlurmErrors carrying argv, exit code,
stdout and stderr, with Slurm's own reason in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from slurm_helpers import partition, shell_job

from tsslurm.profile.schema import Partition
from tsslurm.slurm.adapter import SlurmError


@pytest.mark.timeout(30)
def test_an_unknown_partition_is_a_clear_error(slurm, tmp_path: Path) -> None:
    spec = shell_job(slurm.name("lost"), Partition(name="no-such-partition", gres=""), tmp_path,
                     "exit 0")
    with pytest.raises(SlurmError) as caught:
        slurm.adapter.submit_job(spec)
    error = caught.value
    assert error.argv[:2] == ["sbatch", "--parsable"] and error.returncode == 1
    assert "invalid partition" in error.stderr.lower()
    assert "invalid partition" in str(error).lower() and "sbatch" in str(error)
    assert slurm.adapter.jobs(slurm.prefix) == []


@pytest.mark.timeout(30)
def test_asking_for_more_gpus_than_a_node_has_is_rejected(slurm, tmp_path: Path) -> None:
    spec = shell_job(slurm.name("greedy"), partition("a100", gpus=9), tmp_path, "exit 0")
    with pytest.raises(SlurmError, match="(?i)node configuration is not available") as caught:
        slurm.adapter.submit_job(spec)
    assert caught.value.returncode == 1 and caught.value.stdout == ""


@pytest.mark.timeout(30)
def test_a_wrong_gpu_type_is_rejected(slurm, tmp_path: Path) -> None:
    part = Partition(name="a100", gres="gpu:h100", cpus_per_instance=1, mem="100M",
                     template="a100.sbatch")
    with pytest.raises(SlurmError, match="(?i)not available|invalid generic resource"):
        slurm.adapter.submit_job(shell_job(slurm.name("mistyped"), part, tmp_path, "exit 0"))

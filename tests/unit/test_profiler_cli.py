"""`tsslurm profile` refuses bad input with a clear message and no traceback before it submits
anything; the job's Slurm resources come from the partition (two instances' worth)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tsslurm.errors import UserError
from tsslurm.profile import load_profile
from tsslurm.profile.schema import Partition
from tsslurm.profiler.submit import double_memory, job_minutes, slurm_parameters

pytestmark = pytest.mark.timeout(60)

TSSLURM = str(Path(sys.executable).parent / "tsslurm")


def profile_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSSLURM, "profile", *args], capture_output=True, text=True, check=False,
                          timeout=50, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


@pytest.mark.parametrize(("args", "message"), [
    (["--partition", "nope"], "partition 'nope' is not in the profile (it has: a100)"),
    (["-p", "local-mock"], "the profiler measures a vLLM engine"),
    (["-p", "/nonexistent/profile.yaml"], "cannot read"),
    (["--days", "0"], "Invalid value for '--days'"),
])
def test_bad_input_gets_a_clear_error(args: list[str], message: str) -> None:
    done = profile_command(*args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_directory_as_the_output_is_refused_before_any_job(tmp_path: Path) -> None:
    done = profile_command("--out", str(tmp_path))
    assert done.returncode != 0
    assert "is a directory" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_an_output_under_a_file_is_refused_before_any_job(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = profile_command("--out", str(blocker / "sub" / "out.yaml"))
    assert done.returncode == 1
    assert f"{blocker} is not a directory" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert blocker.read_text() == ""


def test_an_output_on_a_read_only_filesystem_is_refused(tmp_path: Path) -> None:
    done = profile_command("--out", "/proc/tsslurm-profile.yaml")
    assert done.returncode == 1
    assert "cannot write the profile to /proc/tsslurm-profile.yaml: cannot create a file in " \
           "/proc" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_slurm_parameters_hold_two_instances() -> None:
    partition = Partition(name="a100", gres="gpu:a100", gpus_per_instance=2, cpus_per_instance=8,
                          mem="64G", account="lab", qos="high", reservation="maint",
                          site_lines=["module load cuda"], sbatch_options={"exclusive": "user"})
    params = slurm_parameters(partition, "tsslurm-x-profile-a100", 20)
    assert params["gres"] == "gpu:a100:4"
    assert params["cpus_per_task"] == 16 and params["mem"] == "128G"
    assert (params["account"], params["qos"]) == ("lab", "high")
    assert params["additional_parameters"] == {"exclusive": "user", "reservation": "maint"}
    assert params["setup"] == ["module load cuda"] and params["time"] == 20
    assert "constraint" not in params


def test_a_partition_without_gres_asks_for_no_gpus() -> None:
    params = slurm_parameters(Partition(name="cpu", gres="", mem="500M"), "job", 5)
    assert "gres" not in params and params["mem"] == "1000M"


@pytest.mark.parametrize(("mem", "doubled"), [("3G", "6G"), ("1.5G", "3G"), ("100", "200M"),
                                              ("64GB", "128G"), ("0.75T", "1.5T")])
def test_double_memory(mem: str, doubled: str) -> None:
    assert double_memory(mem) == doubled


def test_memory_that_is_not_a_size_is_refused() -> None:
    with pytest.raises(UserError, match="not a Slurm memory size"):
        double_memory("lots")


def test_the_job_never_outlives_the_partition_limit() -> None:
    partition = load_profile("local-tiny").partitions[0]
    assert job_minutes(partition, quick=True) == 20
    short = Partition(name="a100", time_limit="00:10:00")
    assert job_minutes(short, quick=False) == 10

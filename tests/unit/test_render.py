"""sbatch rendering: golden scripts for each template, determinism, quoting, and clear errors."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsslurm.profile.schema import Partition
from tsslurm.slurm.render import (
    JobSpec,
    RenderError,
    job_name,
    load_template,
    render,
    render_job,
    sbatch_lines,
)

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
UPDATE = os.environ.get("TSSLURM_UPDATE_GOLDEN") == "1"
PYTHON = "/opt/tsslurm/.venv/bin/python"

A100 = Partition(
    name="a100", gres="gpu:a100", gpus_per_instance=1, cpus_per_instance=8, mem="64G",
    account="nlp-lab", qos="normal", template="a100.sbatch", time_limit="04:00:00",
    site_lines=["module load cuda/12.4", "source /opt/venvs/vllm/bin/activate"],
    sbatch_options={"exclusive": "", "gpu-bind": "closest"},
)
H100 = Partition(
    name="h100", gres="gpu:h100", gpus_per_instance=4, cpus_per_instance=32, mem="256G",
    constraint="h100&ib", reservation="llm serving", template="h100.sbatch",
    time_limit="1-00:00:00",
    site_lines=["apptainer exec --nv /images/vllm.sif true"],
)
CPU = Partition(name="cpu", gpus_per_instance=1, cpus_per_instance=2, mem="4G",
                template="cpu.sbatch", time_limit="00:30:00")


def _env(role: str) -> dict[str, str]:
    return {
        "TSSLURM_ROLE": role, "TSSLURM_BROKER_ADDRESS": "tcp://head-node:5555",
        "TSSLURM_STATE_DIR": "/home/alice/.tsslurm/llama3-8b",
        "TSSLURM_PROFILE": "/home/alice/profiles/llama 3.yaml", "TSSLURM_PARTITION": "a100",
    }


SPECS = {
    "a100_prefill": JobSpec(
        name=job_name("llama3-8b", "prefill", "0007"), partition=A100,
        log_dir="/home/alice/.tsslurm/llama3-8b/logs", env=_env("prefill"),
        command=[PYTHON, "-m", "tsslurm.launcher"]),
    "h100_decode": JobSpec(
        name=job_name("qwen2.5-32b", "decode", "0012"), partition=H100,
        log_dir="/scratch/bob/tsslurm logs", env=_env("decode") | {"HF_HOME": "/scratch/$HF"},
        command=[PYTHON, "-m", "tsslurm.launcher", "--verbose"], warning_s=300),
    "cpu_broker": JobSpec(
        name=job_name("llama3-8b", "broker", "0001"), partition=CPU, gpus=0,
        log_dir="/home/alice/.tsslurm/llama3-8b/logs", env={"TSSLURM_ROLE": "broker"},
        command=[PYTHON, "-m", "tsslurm", "broker", "--profile", "llama3-8b"], time_limit="12:00:00"),
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_rendered_script_matches_golden(case: str) -> None:
    script = render_job(SPECS[case])
    golden = GOLDEN / f"{case}.sbatch"
    if UPDATE:
        golden.write_text(script)
    assert script == golden.read_text(), f"rerun with TSSLURM_UPDATE_GOLDEN=1 if intended ({case})"


@pytest.mark.parametrize("case", sorted(SPECS))
def test_rendered_script_is_valid_bash(case: str) -> None:
    checked = subprocess.run(["bash", "-n"], input=render_job(SPECS[case]), text=True,
                             capture_output=True, timeout=10, check=False)
    assert checked.returncode == 0, checked.stderr


def test_sbatch_lines_are_sorted_and_complete() -> None:
    lines = sbatch_lines(SPECS["a100_prefill"])
    keys = [line.split("=")[0].removeprefix("#SBATCH --") for line in lines]
    assert keys == sorted(keys)
    assert "#SBATCH --gres=gpu:a100:1" in lines
    assert "#SBATCH --signal=B:USR1@120" in lines
    assert "#SBATCH --time=04:00:00" in lines
    assert "#SBATCH --job-name=tsslurm-llama3-8b-prefill-0007" in lines
    assert "#SBATCH --exclusive" in lines
    assert "#SBATCH --output=/home/alice/.tsslurm/llama3-8b/logs/%x-%j.out" in lines


def test_values_with_spaces_are_quoted() -> None:
    lines = sbatch_lines(SPECS["h100_decode"])
    assert "#SBATCH --reservation='llm serving'" in lines
    assert "#SBATCH --output='/scratch/bob/tsslurm logs/%x-%j.out'" in lines
    assert "#SBATCH --gres=gpu:h100:4" in lines


def test_rendering_ignores_dict_order() -> None:
    spec = SPECS["a100_prefill"]
    reordered = JobSpec(name=spec.name, partition=spec.partition, log_dir=spec.log_dir,
                        env=dict(reversed(list(spec.env.items()))), command=spec.command)
    assert render_job(reordered) == render_job(spec)


def test_warning_is_at_most_half_the_time_limit() -> None:
    spec = JobSpec(name="t", partition=CPU, log_dir="/tmp", time_limit="1", gpus=0)
    assert "#SBATCH --signal=B:USR1@30" in sbatch_lines(spec)
    assert not any(line.startswith("#SBATCH --gres") for line in sbatch_lines(spec))


def test_default_command_is_this_python_running_the_launcher() -> None:
    import sys

    spec = JobSpec(name="t", partition=CPU, log_dir="/tmp")
    assert render_job(spec).rstrip().endswith(f"exec {sys.executable} -m tsslurm.launcher")


@settings(max_examples=15, deadline=None)
@given(st.dictionaries(st.from_regex(r"T_[A-Z0-9_]{0,10}", fullmatch=True),
                       st.text(alphabet=st.characters(blacklist_characters="\n\r\0",
                                                      blacklist_categories=["Cs"]), max_size=30),
                       min_size=1, max_size=5))
def test_exported_values_reach_the_job_unchanged(env: dict[str, str]) -> None:
    keys = sorted(env)
    spec = JobSpec(name="t", partition=CPU, log_dir="/tmp", env=env, gpus=0,
                   command=["bash", "-c", 'for k in "$@"; do printf "%s\\0" "${!k}"; done', "_",
                            *keys])
    done = subprocess.run(["bash"], input=render_job(spec), text=True, capture_output=True,
                          timeout=10, check=False)
    assert done.stdout.split("\0")[:-1] == [env[k] for k in keys], done.stderr


@pytest.mark.parametrize("spec, message", [
    (JobSpec(name="t", partition=CPU, log_dir="logs"), "absolute path"),
    (JobSpec(name="t", partition=CPU, log_dir="/tmp", env={"1BAD": "x"}), "valid shell name"),
    (JobSpec(name="t", partition=CPU, log_dir="/tmp", env={"OK": "a\nb"}), "line break"),
    (JobSpec(name="", partition=CPU, log_dir="/tmp"), "needs a name"),
    (JobSpec(name="t", partition=CPU, log_dir="/tmp", time_limit="soon"), "not a Slurm duration"),
    (JobSpec(name="t", partition=CPU, log_dir="/tmp", gpus=-1), "0 or more"),
    (JobSpec(name="t", partition=Partition(name="p", sbatch_options={"time": "1"}),
             log_dir="/tmp"), "set by tsslurm"),
    (JobSpec(name="t", partition=Partition(name="p", sbatch_options={"bad key": "1"}),
             log_dir="/tmp"), "long option name"),
])
def test_bad_specs_get_clear_errors(spec: JobSpec, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(spec, "{{sbatch}}\nexec {{command}}\n")


def test_bad_templates_get_clear_errors() -> None:
    spec = JobSpec(name="t", partition=CPU, log_dir="/tmp")
    with pytest.raises(RenderError, match="unknown slot"):
        render(spec, "{{sbatch}}\n{{modules}}\nexec {{command}}\n")
    with pytest.raises(RenderError, match="needs the"):
        render(spec, "#!/bin/bash\nexec {{command}}\n")


def test_shell_syntax_in_templates_is_left_alone() -> None:
    spec = JobSpec(name="t", partition=CPU, log_dir="/tmp")
    script = render(spec, "{{sbatch}}\necho ${HOME} $USER\nexec {{command}}\n")
    assert "echo ${HOME} $USER" in script


def test_job_name_rejects_unsafe_parts() -> None:
    assert job_name("d", "decode", "x1") == "tsslurm-d-decode-x1"
    with pytest.raises(RenderError, match="role"):
        job_name("d", "de code", "x")


def test_every_shipped_template_renders() -> None:
    for path in sorted((Path(__file__).parents[2] / "sbatch_templates").glob("*.sbatch")):
        text, _ = load_template(path.name)
        spec = JobSpec(name="t", partition=Partition(name="p", template=path.name), log_dir="/l")
        assert "#SBATCH --partition=p" in render(spec, text, path.name)

"""Running the profiling job through submitit: on a partition as a Slurm job (two instances' worth
of CPUs, GPUs and memory, the partition's account, QOS, site lines and sbatch options), or with
--local as a subprocess here. Waits for it, reporting its state, and turns every way a job can go
wrong (submission refused, job failed, cancelled, timed out, interrupted) into a UserError that
names the job and its log."""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsslurm.errors import UserError
from tsslurm.profile.schema import Partition
from tsslurm.profiler.job import measure_partition
from tsslurm.profiler.results import JobFailure, Measurements, ProfileRequest
from tsslurm.slurm.duration import parse_slurm_duration

JOB_MINUTES = {True: 20, False: 60}
"""Time limit of the profiling job (quick, full); the partition's own limit if shorter."""
POLL_S = 2.0
LOG_TAIL_LINES = 6
"""Lines of a failed job's log quoted in the error."""
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.IGNORECASE)


class ProfileJobError(UserError):
    """The profiling job did not return measurements."""


def slurm_parameters(partition: Partition, job_name: str, minutes: int) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for a job holding two instances of the partition."""
    params: dict[str, Any] = {
        "partition": partition.name, "job_name": job_name, "time": minutes,
        "cpus_per_task": 2 * partition.cpus_per_instance, "mem": double_memory(partition.mem),
        "setup": list(partition.site_lines), "use_srun": False, "stderr_to_stdout": True,
    }
    if partition.gres:
        params["gres"] = f"{partition.gres}:{2 * partition.gpus_per_instance}"
    for key in ("account", "qos", "constraint"):
        if getattr(partition, key):
            params[key] = getattr(partition, key)
    extra = dict(partition.sbatch_options)
    if partition.reservation:
        extra["reservation"] = partition.reservation
    if extra:
        params["additional_parameters"] = extra
    return params


def double_memory(mem: str) -> str:
    """Twice a Slurm memory size (`3G` -> `6G`; a bare number is MB)."""
    found = _MEMORY.match(mem.strip())
    if not found:
        raise UserError(f"partition mem {mem!r} is not a Slurm memory size such as 3G or 500M")
    number, unit = float(found.group(1)), found.group(2).upper() or "M"
    doubled = 2 * number
    return f"{int(doubled) if doubled == int(doubled) else doubled}{unit}"


def job_minutes(partition: Partition, quick: bool) -> int:
    limit_s = parse_slurm_duration(partition.time_limit)
    wanted = JOB_MINUTES[quick]
    return max(1, min(wanted, int(limit_s // 60))) if limit_s else wanted


def make_executor(folder: Path, partition: Partition, job_name: str, quick: bool,
                  local: bool) -> Any:
    import submitit

    minutes = job_minutes(partition, quick)
    if local:
        executor = submitit.LocalExecutor(folder=folder)
        gpus = _local_gpus()
        executor.update_parameters(timeout_min=minutes, gpus_per_node=len(gpus),
                                   visible_gpus=gpus, stderr_to_stdout=True)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as error:
        raise UserError(f"cannot submit to Slurm from here: {error} (use --local to profile "
                        f"this machine)") from None
    executor.update_parameters(**slurm_parameters(partition, job_name, minutes))
    return executor


def _local_gpus() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(g) for g in visible.split(",") if g.strip().isdigit()]
    return list(range(len(glob.glob("/dev/nvidia[0-9]*"))))


def run_profile_job(executor: Any, request: ProfileRequest,
                    echo: Callable[[str], None]) -> Measurements:
    """Submit `measure_partition(request)`, wait, and return its Measurements."""
    from submitit.core.utils import FailedSubmissionError

    try:
        job = executor.submit(measure_partition, request)
    except (FailedSubmissionError, OSError) as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise ProfileJobError(f"the profiling job was not submitted: "
                              f"{_first_line_of_interest(lines[::-1])}") from None
    log = Path(str(job.paths.stdout).replace("%j", str(job.job_id)))
    echo(f"profiling job {job.job_id} submitted; log {log}")
    try:
        _wait(job, echo)
        outcome = job.result()
    except KeyboardInterrupt:
        job.cancel(check=False)
        raise
    except Exception as error:  # noqa: BLE001 (submitit raises its own and the job's errors)
        raise ProfileJobError(_failure_text(job, error, log)) from None
    if isinstance(outcome, JobFailure):
        raise ProfileJobError(f"the profiling job {job.job_id} on {outcome.node} failed while "
                              f"{outcome.stage}: {outcome.message} (log: {log})")
    return outcome


def _wait(job: Any, echo: Callable[[str], None]) -> None:
    seen = ""
    began = time.monotonic()
    while not job.done():
        state = job.state
        if state != seen:
            echo(f"job {job.job_id}: {state} ({time.monotonic() - began:.0f} s)")
            seen = state
        time.sleep(POLL_S)


def _failure_text(job: Any, error: BaseException, log: Path) -> str:
    """What ended the job, from submitit's error (the exception the function raised, or that it
    returned nothing), with the tail of the job's log."""
    from submitit.core.utils import FailedJobError

    state = _final_state(job)
    if isinstance(error, FailedJobError):
        what = f"the profiler raised {_traceback_last_line(str(error))}"
    else:
        what = "it ended before the profiler returned"
    tail = log_tail(log)
    seen = (f"; the last lines of its log {log}:\n" + "\n".join(f"    {line}" for line in tail)
            if tail else f"; its log {log} is empty or missing")
    return f"the profiling job {job.job_id} ended {state} without measurements ({what}){seen}"


def _traceback_last_line(text: str) -> str:
    """The exception line of the trace submitit quotes between two lines of dashes."""
    parts = [part for part in text.split("-" * 22) if part.strip()]
    trace = parts[1] if len(parts) > 2 else text
    return _first_line_of_interest(trace.splitlines()[::-1])


def log_tail(log: Path, count: int = LOG_TAIL_LINES) -> list[str]:
    """The last `count` lines of a job's log that say something (no blank or ruler lines)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    said = [line.rstrip()[:300] for line in lines if _says_something(line)]
    return said[-count:]


def _first_line_of_interest(lines: list[str]) -> str:
    return next((line.strip()[:300] for line in lines if _says_something(line)), "")


def _says_something(line: str) -> bool:
    return bool(line.strip()) and not set(line.strip()) <= {"-", "^", "~"}


def _final_state(job: Any) -> str:
    try:
        info = job.get_info(mode="force")
        return str(info.get("State") or info.get("jobState") or job.state)
    except Exception:  # noqa: BLE001 (an observation for the message only)
        return "UNKNOWN"

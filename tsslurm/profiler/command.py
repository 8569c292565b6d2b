"""`tsslurm profile`: measure one (model, partition) and write the figures into the profile.

Loads the profile, checks the partition (in the profile, and in Slurm unless --local), runs the
profiling job through submitit, analyses what it measured, fits the partition's queue wait from
Slurm's accounting, and writes velocities, start-up time, queue wait and provenance into the
profile (or --out), keeping the rest of the file as it was. The new text is checked to load back
to exactly the measured values before it replaces anything, and is written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from tsslurm.errors import UserError
from tsslurm.profile import Partition, Profile, ProfileError, load_profile, parse_profile, state_dir
from tsslurm.profile.load import resolve_profile_path
from tsslurm.profile.schema import UnknownPartition
from tsslurm.profiler.analysis import Analysis, analyse
from tsslurm.profiler.queue_wait import QueueWaitFit, queue_wait_from_slurm
from tsslurm.profiler.results import ProfileRequest
from tsslurm.profiler.submit import make_executor, run_profile_job
from tsslurm.profiler.yaml_edit import EditError, dump_whole, edit_in_place
from tsslurm.slurm.adapter import SlurmAdapter, SlurmError
from tsslurm.slurm.render import job_name as render_job_name


class ProfileArgs(msgspec.Struct, frozen=True, kw_only=True):
    profile: str
    partition: str | None = None
    local: bool = False
    out: Path | None = None
    quick: bool = False
    days: float = 14.0
    job_name: str | None = None


class Written(msgspec.Struct, frozen=True):
    path: Path
    comments_kept: bool
    analysis: Analysis
    queue_wait: QueueWaitFit


def run_profile(args: ProfileArgs, echo: Callable[[str], None]) -> Written:
    source = resolve_profile_path(args.profile)
    profile = load_profile(args.profile)
    partition = choose_partition(profile, args.partition)
    if profile.engine.kind != "vllm":
        raise UserError(f"engine.kind is {profile.engine.kind!r}: the profiler measures a vLLM "
                        f"engine (a mock engine's velocities are the profile's own)")
    target = (args.out or source).expanduser()
    check_writable(target)
    adapter = SlurmAdapter()
    if not args.local:
        check_slurm_partition(adapter, partition.name)
    request = ProfileRequest(profile=profile, partition=partition.name, quick=args.quick)
    name = args.job_name or render_job_name(profile.deployment, "profile", partition.name)
    folder = state_dir(profile) / "profiler"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    executor = make_executor(folder, partition, name, args.quick, args.local)
    analysis = analyse(run_profile_job(executor, request, echo), profile, request.headroom)
    echo(f"queue wait: asking Slurm's accounting about partition {partition.name}")
    queue = queue_wait_from_slurm(adapter, partition.name, args.days, datetime.now())
    fields = profile_fields(analysis, queue)
    kept = write_profile(source.read_text(), target, partition.name, fields, folder)
    return Written(target, kept, analysis, queue)


def choose_partition(profile: Profile, name: str | None) -> Partition:
    try:
        return profile.partition(name)
    except UnknownPartition as unknown:
        raise UserError(f"partition {name!r} is not in the profile (it has: {unknown.known})") from None


def check_writable(target: Path) -> None:
    """Fail before any job runs when the profile could not be written: a directory in its place,
    a parent that is not a directory, or one where no file can be created."""
    if target.is_dir():
        raise UserError(f"cannot write the profile to {target}: it is a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"cannot write the profile to {target}: the file is not writable")
    parent = next((p for p in target.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir():
        raise UserError(f"cannot write the profile to {target}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise UserError(f"cannot write the profile to {target}: cannot create a file in "
                        f"{parent} ({error.strerror or error})") from None


def check_slurm_partition(adapter: SlurmAdapter, name: str) -> None:
    try:
        known = [p.name for p in adapter.partitions()]
    except SlurmError as error:
        raise UserError(f"cannot ask Slurm about partition {name!r}: {error} (use --local to "
                        f"profile this machine)") from None
    if name not in known:
        raise UserError(f"Slurm has no partition {name!r} (it has: {', '.join(known)})")


def profile_fields(analysis: Analysis, queue: QueueWaitFit) -> dict[str, Any]:
    """The partition entries the profile gets, in YAML-ready builtins."""
    note = queue.note if queue.queue_wait else f"{queue.note}; kept the profile's queue_wait"
    velocities = msgspec.structs.replace(
        analysis.velocities, measured={**analysis.velocities.measured, "queue_wait": note})
    fields: dict[str, Any] = {"model_load_s": analysis.model_load_s}
    if queue.queue_wait is not None:
        wait = msgspec.to_builtins(queue.queue_wait)
        if queue.queue_wait.distribution != "lognormal":
            wait.pop("sigma", None)
        fields["queue_wait"] = wait
    fields["velocities"] = msgspec.to_builtins(velocities)
    return fields


def write_profile(text: str, target: Path, partition: str, fields: dict[str, Any],
                  spare_dir: Path) -> bool:
    """Write the edited profile to `target`; True when its comments were kept. When `target`
    cannot be written after all, the edited text is kept in `spare_dir` and the error says where."""
    for candidate, kept in _candidates(text, partition, fields):
        if _loads_back(candidate, target, partition, fields):
            try:
                _write_atomically(target, candidate)
            except OSError as error:
                spare = _keep_spare(spare_dir, target, candidate)
                raise UserError(f"cannot write the profile to {target} "
                                f"({error.strerror or error}); the measured profile is in "
                                f"{spare}") from None
            return kept
    raise UserError(f"could not write the measurements into {target} so that it loads back to "
                    f"them; nothing was written")


def _keep_spare(spare_dir: Path, target: Path, text: str) -> Path:
    spare = spare_dir / f"{target.stem}.measured-{datetime.now():%Y%m%dT%H%M%S}.yaml"
    spare.write_text(text)
    return spare


def _candidates(text: str, partition: str, fields: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    for edit, kept in ((edit_in_place, True), (dump_whole, False)):
        try:
            yield edit(text, partition, fields), kept
        except EditError:
            continue


def _loads_back(text: str, target: Path, partition: str, fields: dict[str, Any]) -> bool:
    try:
        loaded = msgspec.to_builtins(parse_profile(text, source=str(target)).partition(partition))
    except (ProfileError, KeyError):
        return False
    return _holds(loaded, fields)


def _holds(loaded: Any, expected: Any) -> bool:
    """Every value of `expected` is in `loaded` (which may hold defaults besides)."""
    if isinstance(expected, dict):
        return isinstance(loaded, dict) and all(
            key in loaded and _holds(loaded[key], value) for key, value in expected.items())
    return bool(loaded == expected)


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        if target.exists():
            os.chmod(temporary, target.stat().st_mode & 0o777)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def summary(written: Written, before: Partition | None) -> str:
    """What was measured, next to what the profile said before, for the terminal."""
    analysis, velocities = written.analysis, written.analysis.velocities
    old = before.velocities if before else None
    step = velocities.decode_step
    lines = [
        _row("V_P prefill", f"{velocities.prefill_tokens_per_s:,.0f} tokens/s"
             + _was(old and old.prefill_tokens_per_s)),
        _row("V_N KV transfer", f"{velocities.kv_transfer_tokens_per_s:,.0f} tokens/s"
             + _was(old and old.kv_transfer_tokens_per_s)
             + f"; fixed latency {analysis.kv_latency_s * 1000:.1f} ms"),
        _row("KV", f"{velocities.kv_bytes_per_token:,} bytes/token, capacity "
                   f"{velocities.kv_capacity_tokens:,} tokens"),
        _row("prefill overhead", f"{velocities.prefill_overhead_ms:.2f} ms"),
        _row("decode step", f"{step.base_ms:g} ms + {step.per_sequence_ms:g} ms/sequence + "
                            f"{step.per_context_token_us:g} us/context token"),
        _row("", velocities.measured["decode_step_fit"]),
        _row("start-up", f"{analysis.model_load_s:.1f} s" + _was(before and before.model_load_s)),
        _row("queue wait", _queue_text(written.queue_wait)),
        "V_D per bucket, tokens/s: measured | step model, same batch | roofline | batch, cap",
    ]
    lines += [f"  ({c.row},{c.column}) {c.input_tokens:>6} in {c.output_tokens:>5} out: "
              f"{c.measured:>11,.0f} | {c.model_same_batch:>11,.0f} | {c.roofline:>11,.0f} | "
              f"{c.batch} {c.limited_by}" for c in analysis.cells]
    kept = "" if written.comments_kept else " (re-dumped: its comments could not be kept)"
    lines.append(f"written to {written.path}{kept}")
    return "\n".join(lines)


def _row(label: str, text: str) -> str:
    return f"{label:<18} {text}"


def _was(value: float | None) -> str:
    return f" (was {value:,.6g})" if value else ""


def _queue_text(fit: QueueWaitFit) -> str:
    if fit.queue_wait is None:
        return f"kept the profile's value: {fit.note}"
    wait = fit.queue_wait
    sigma = f", sigma {wait.sigma:g}" if wait.distribution == "lognormal" else ""
    return f"{wait.distribution}, mean {wait.mean_s:g} s{sigma} ({fit.note})"

"""sbatch scripts rendered from a partition's template and a job spec, deterministically.

A template (sbatch_templates/*.sbatch, editable by a site) is a shell script with four slots:
`{{sbatch}}` (the #SBATCH lines, sorted, values shell-quoted), `{{exports}}` (the environment the
launcher needs, sorted), `{{site}}` (the partition's site_lines: module loads, containers) and
`{{command}}` (the launcher, quoted; templates `exec` it so it receives Slurm's signals itself).
Nothing else in a template is touched, so `$VARS` and `${VARS}` stay shell syntax.

Pure: no I/O except `load_template`, which reads a template file."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import PurePosixPath

import msgspec

from tsslurm.errors import UserError
from tsslurm.profile.schema import Partition
from tsslurm.slurm.duration import format_slurm_duration, parse_slurm_duration

SLOT = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
SLOTS = ("sbatch", "exports", "site", "command")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTION_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
DEFAULT_WARNING_S = 120
WARNING_SIGNAL = "USR1"


class RenderError(UserError):
    """A job spec or template that cannot become a valid sbatch script; says which field and why."""


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One Slurm job to render: what runs, where, and with which environment."""

    name: str
    """The job name (see `job_name`): tsslurm finds its jobs again by it."""
    partition: Partition
    log_dir: str
    """Absolute directory for the job's stdout/stderr (`<name>-<jobid>.out/.err`); must exist."""
    env: dict[str, str] = {}
    """Exported before the command: the launcher's variables, built by
    `tsslurm.launcher.settings.launcher_env` (TSSLURM_ROLE, TSSLURM_STATE_DIR, ...)."""
    command: list[str] | None = None
    """argv of the job; default: this Python running `-m tsslurm.launcher`."""
    gpus: int | None = None
    """GPUs of the partition's GRES type; default the partition's gpus_per_instance, 0 for none."""
    time_limit: str | None = None
    """Overrides the partition's time_limit (Slurm duration)."""
    warning_s: int = DEFAULT_WARNING_S
    """--signal=B:USR1@<s>: the launcher's warning to drain before the time limit (at most half
    the time limit; Slurm may deliver it up to a minute early)."""


def job_name(deployment: str, role: str, suffix: str) -> str:
    """`tsslurm-<deployment>-<role>-<suffix>`: identifies the deployment and role at a glance."""
    for label, part in (("deployment", deployment), ("role", role), ("suffix", suffix)):
        if not _NAME_PART.match(part):
            raise RenderError(f"job name {label} {part!r}: use letters, digits, '.', '_', '-'")
    return f"tsslurm-{deployment}-{role}-{suffix}"


def render(spec: JobSpec, template: str, source: str = "<template>") -> str:
    """The sbatch script for `spec` from `template`'s text."""
    values = {
        "sbatch": "\n".join(sbatch_lines(spec)),
        "exports": "\n".join(export_lines(spec.env)),
        "site": "\n".join(spec.partition.site_lines),
        "command": shlex.join(spec.command or [sys.executable, "-m", "tsslurm.launcher"]),
    }
    used = set(SLOT.findall(template))
    unknown = sorted(used - set(SLOTS))
    if unknown:
        raise RenderError(f"{source}: unknown slot(s) {', '.join(unknown)}; slots are "
                          + ", ".join("{{" + s + "}}" for s in SLOTS))
    if "sbatch" not in used or "command" not in used:
        raise RenderError(f"{source}: a template needs the {{{{sbatch}}}} and {{{{command}}}} slots")
    kept = [line for line in template.splitlines(keepends=True) if not _empty_slot(line, values)]
    return SLOT.sub(lambda match: values[match.group(1)], "".join(kept))


def _empty_slot(line: str, values: dict[str, str]) -> bool:
    """A line holding nothing but a slot that renders empty is dropped."""
    match = SLOT.fullmatch(line.strip())
    return match is not None and values.get(match.group(1), "x") == ""


def sbatch_options(spec: JobSpec) -> dict[str, str | None]:
    """Option name -> value (None for a flag) for every #SBATCH line."""
    part = spec.partition
    if not spec.name.strip():
        raise RenderError("a job needs a name (see tsslurm.slurm.render.job_name)")
    limit_s = _time_limit_s(spec)
    options: dict[str, str | None] = {
        "job-name": spec.name, "partition": part.name, "nodes": "1", "ntasks": "1",
        "cpus-per-task": str(part.cpus_per_instance), "mem": part.mem,
        "time": format_slurm_duration(limit_s),
        "signal": f"B:{WARNING_SIGNAL}@{_warning_lead(spec.warning_s, limit_s)}",
        "output": str(_log_dir(spec) / "%x-%j.out"), "error": str(_log_dir(spec) / "%x-%j.err"),
        "no-requeue": None,
    }
    gpus = part.gpus_per_instance if spec.gpus is None else spec.gpus
    if gpus < 0:
        raise RenderError(f"job {spec.name}: gpus must be 0 or more, not {gpus}")
    if gpus > 0 and part.gres:
        options["gres"] = f"{part.gres}:{gpus}"
    for key in ("account", "qos", "constraint", "reservation"):
        if getattr(part, key):
            options[key] = getattr(part, key)
    return options | _site_options(part, options)


def sbatch_lines(spec: JobSpec) -> list[str]:
    """`#SBATCH --key=value` lines sorted by key, values shell-quoted."""
    lines = []
    for key, value in sorted(sbatch_options(spec).items()):
        _check_value(f"sbatch option {key}", value or "")
        lines.append(f"#SBATCH --{key}" + ("" if value is None else f"={shlex.quote(value)}"))
    return lines


def export_lines(env: dict[str, str]) -> list[str]:
    lines = []
    for key, value in sorted(env.items()):
        if not _ENV_KEY.match(key):
            raise RenderError(f"environment variable name {key!r} is not a valid shell name")
        _check_value(f"environment variable {key}", value)
        lines.append(f"export {key}={shlex.quote(value)}")
    return lines


def _site_options(part: Partition, ours: dict[str, str | None]) -> dict[str, str | None]:
    extra: dict[str, str | None] = {}
    for raw_key, value in part.sbatch_options.items():
        key = raw_key.lstrip("-")
        if not _OPTION_KEY.match(key):
            raise RenderError(f"partition {part.name}: sbatch_options key {raw_key!r} is not an "
                              "sbatch long option name (e.g. exclusive, gpu-bind)")
        if key in ours:
            raise RenderError(f"partition {part.name}: sbatch_options.{key} is set by tsslurm "
                              "itself; use the partition's own field instead")
        extra[key] = str(value) if value not in ("", None) else None
    return extra


def _time_limit_s(spec: JobSpec) -> float:
    if spec.time_limit is None:
        return spec.partition.time_limit_s
    try:
        return parse_slurm_duration(spec.time_limit)
    except ValueError as error:
        raise RenderError(f"job {spec.name}: time_limit: {error}") from None


def _warning_lead(warning_s: int, limit_s: float) -> int:
    return max(1, min(int(warning_s), int(limit_s // 2)))


def _log_dir(spec: JobSpec) -> PurePosixPath:
    path = PurePosixPath(spec.log_dir)
    if not path.is_absolute():
        raise RenderError(f"job {spec.name}: log_dir {spec.log_dir!r} must be an absolute path "
                          "(Slurm resolves relative ones against the submit directory)")
    return path


def _check_value(what: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\0" in value:
        raise RenderError(f"{what}: a value cannot contain a line break or NUL")


def load_template(name: str) -> tuple[str, str]:
    """(text, path) of a template by file name under sbatch_templates/, or by path."""
    from tsslurm.profile.load import template_path

    path = template_path(name)
    try:
        return path.read_text(), str(path)
    except OSError as error:
        raise RenderError(f"cannot read sbatch template {path}: {error.strerror}") from None


def render_job(spec: JobSpec) -> str:
    """Render `spec` with its partition's template file."""
    text, source = load_template(spec.partition.template)
    return render(spec, text, source)

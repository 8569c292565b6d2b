"""Parsers for the text Slurm's commands print: squeue, sacct (and `sacct -c`), sinfo, scontrol.

Pure: no I/O, no clock. Each parser takes the command's stdout as produced with the format string
defined next to it (the adapter passes exactly that format) and returns typed values. Tested
against outputs recorded from a real Slurm 22.05 cluster (tests/data/slurm/)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from tsslurm.slurm.duration import parse_slurm_duration

FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "TIMEOUT",
})
"""States a job never leaves (COMPLETING is not one: its processes are still being cleaned up)."""
ACTIVE_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"})
_NO_VALUE = frozenset({"", "N/A", "NONE", "UNKNOWN", "(NULL)", "NONE ASSIGNED"})
_NO_LIMIT = frozenset({"UNLIMITED", "INFINITE", "NOT_SET", "INVALID", "PARTITION_LIMIT"})

SQUEUE_FIELDS = ("%i", "%T", "%P", "%N", "%S", "%l", "%L", "%r", "%j")
SQUEUE_FORMAT = "|".join(SQUEUE_FIELDS)
"""Name last: the only field a user chooses, so a `|` in it cannot shift the others."""
SACCT_FIELDS = ("JobID", "State", "Partition", "NodeList", "Start", "Timelimit", "ExitCode",
                "Reason", "JobName")
JOBCOMP_FIELDS = ("JobID", "State", "Partition", "NodeList", "Start", "Timelimit", "ExitCode",
                  "JobName")
"""What `sacct -c` (jobcomp/filetxt, no slurmdbd) can report: no Reason."""
HISTORY_FIELDS = ("JobID", "State", "Partition", "NodeList", "Submit", "Eligible", "Start", "End",
                  "JobName")
"""What the queue-wait history needs from `sacct` (slurmdbd only: `sacct -c` has no Submit)."""
HISTORY_STATES = "PD,R,CD,CA,F,TO,NF,OOM,PR,DL,BF"
SINFO_FIELDS = ("%N", "%P", "%a", "%l", "%T", "%c", "%m", "%G", "%E")
SINFO_FORMAT = "|".join(SINFO_FIELDS)


class SlurmParseError(ValueError):
    """Output that does not have the shape the format string promises."""


class JobStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What Slurm says about one job at one moment."""

    job_id: str
    state: str
    """Base state in capitals: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, NODE_FAIL, ..."""
    name: str = ""
    reason: str = ""
    """Why a job pends (Resources, Priority, JobHeldUser, ReqNodeNotAvail, ...) or ended."""
    partition: str = ""
    nodes: str = ""
    """Slurm hostlist expression (e.g. a100-[1-2]); empty while pending."""
    start_time: datetime | None = None
    """Local time; for a pending job, Slurm's estimate (if any)."""
    time_limit_s: float | None = None
    """None: no limit."""
    time_left_s: float | None = None
    exit_code: int | None = None
    """The batch script's exit status, known once the job ended (None before, or when unknown)."""
    signal: int | None = None
    """The signal that ended the batch script, if one did."""
    cancelled_by: int | None = None
    """uid that cancelled the job (sacct's `CANCELLED by <uid>`)."""
    source: str = "squeue"

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def running(self) -> bool:
        return self.state in ACTIVE_STATES


class JobTimes(msgspec.Struct, frozen=True, kw_only=True):
    """When one job was submitted, became eligible, started and ended (sacct's record)."""

    job_id: str
    state: str
    partition: str
    name: str = ""
    submit: datetime | None = None
    eligible: datetime | None = None
    """None while held or waiting on a dependency."""
    start: datetime | None = None
    """None, or meaningless, for a job that never ran: `ran` says which."""
    end: datetime | None = None
    ran: bool = False
    """True when the job was given nodes (sacct lists `None assigned` for one that never ran)."""


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    state: str
    """sinfo's long state without flags: idle, mixed, allocated, drained, draining, down, ..."""
    responding: bool = True
    """False when sinfo marks the node `*` (slurmd not answering)."""
    partitions: tuple[str, ...] = ()
    cpus: int = 0
    memory_mb: int = 0
    gres: str = ""
    reason: str = ""


class PartitionInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    available: bool
    default: bool = False
    time_limit_s: float | None = None
    nodes: tuple[str, ...] = ()
    gres: tuple[str, ...] = ()


def _split(line: str, count: int, source: str) -> list[str]:
    fields = line.split("|", count - 1)
    if len(fields) != count:
        raise SlurmParseError(f"{source}: expected {count} '|'-separated fields, got {line!r}")
    return [field.strip() for field in fields]


def _lines(text: str) -> Iterable[str]:
    return (line for line in text.splitlines() if line.strip())


def _value(text: str) -> str:
    return "" if text.upper() in _NO_VALUE else text


def parse_time(text: str) -> datetime | None:
    """Slurm's local timestamps (2025-11-22T03:40:00); None for N/A, Unknown, None."""
    if _value(text) == "":
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise SlurmParseError(f"not a Slurm timestamp: {text!r}") from None


def parse_limit(text: str) -> float | None:
    """A duration in seconds, or None for UNLIMITED / NOT_SET / Partition_Limit."""
    if text.upper() in _NO_LIMIT or _value(text) == "":
        return None
    try:
        return parse_slurm_duration(text)
    except ValueError as error:
        raise SlurmParseError(str(error)) from None


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """`exit:signal` (e.g. 0:0, 1:0, 0:15) -> (exit code, signal or None)."""
    code, _, sig = text.partition(":")
    if not code.isdigit() or (sig and not sig.isdigit()):
        return None, None
    return int(code), (int(sig) or None) if sig else None


def parse_state(text: str) -> tuple[str, int | None]:
    """`CANCELLED by 0` -> (CANCELLED, 0); `RUNNING` -> (RUNNING, None); drops a trailing `+`."""
    words = text.split()
    if not words:
        raise SlurmParseError("empty job state")
    state = words[0].rstrip("+").upper()
    if len(words) == 3 and words[1] == "by" and words[2].isdigit():
        return state, int(words[2])
    return state, None


def parse_squeue(text: str) -> dict[str, JobStatus]:
    """Output of `squeue -h -o SQUEUE_FORMAT` by job id."""
    jobs = {}
    for line in _lines(text):
        job_id, state, partition, nodes, start, limit, left, reason, name = _split(
            line, len(SQUEUE_FIELDS), "squeue")
        jobs[job_id] = JobStatus(
            job_id=job_id, state=parse_state(state)[0], name=name, reason=_value(reason),
            partition=partition, nodes=_value(nodes), start_time=parse_time(start),
            time_limit_s=parse_limit(limit), time_left_s=parse_limit(left), source="squeue")
    return jobs


def parse_sacct(text: str, jobcomp: bool = False) -> dict[str, JobStatus]:
    """Output of `sacct -n -P -X -o SACCT_FIELDS` (or `sacct -c` with JOBCOMP_FIELDS) by job id.

    sacct lists a requeued job once per attempt; the last line wins."""
    fields = JOBCOMP_FIELDS if jobcomp else SACCT_FIELDS
    jobs = {}
    for line in _lines(text):
        row = dict(zip(fields, _split(line, len(fields), "sacct")))
        state, by_uid = parse_state(row["State"])
        exit_code, sig = parse_exit_code(row["ExitCode"])
        job_id = row["JobID"]
        jobs[job_id] = JobStatus(
            job_id=job_id, state=state, name=row["JobName"], reason=_value(row.get("Reason", "")),
            partition=row["Partition"], nodes=_value(row["NodeList"]),
            start_time=parse_time(row["Start"]), time_limit_s=parse_limit(row["Timelimit"]),
            exit_code=exit_code if state in FINAL_STATES else None, signal=sig,
            cancelled_by=by_uid, source="jobcomp" if jobcomp else "sacct")
    return jobs


def parse_sacct_history(text: str) -> list[JobTimes]:
    """Output of `sacct -n -P -X -o HISTORY_FIELDS`, one JobTimes per line, in sacct's order."""
    jobs = []
    for line in _lines(text):
        row = dict(zip(HISTORY_FIELDS, _split(line, len(HISTORY_FIELDS), "sacct")))
        jobs.append(JobTimes(
            job_id=row["JobID"], state=parse_state(row["State"])[0], partition=row["Partition"],
            name=row["JobName"], submit=parse_time(row["Submit"]),
            eligible=parse_time(row["Eligible"]), start=parse_time(row["Start"]), end=parse_time(row["End"]),
            ran=_value(row["NodeList"]) != ""))
    return jobs


def parse_sinfo_nodes(text: str) -> list[NodeInfo]:
    """Output of `sinfo -h -N -o SINFO_FORMAT`: one node per name, partitions merged."""
    nodes: dict[str, NodeInfo] = {}
    for line in _lines(text):
        name, partition, _, _, state, cpus, memory, gres, reason = _split(
            line, len(SINFO_FIELDS), "sinfo")
        known = nodes.get(name)
        partitions = (known.partitions if known else ()) + (partition.rstrip("*"),)
        nodes[name] = NodeInfo(
            name=name, state=state.rstrip("*~#!%$@^-").lower(), responding=not state.endswith("*"),
            partitions=partitions, cpus=_int(cpus), memory_mb=_int(memory),
            gres=_value(gres), reason=_value(reason))
    return list(nodes.values())


def parse_sinfo_partitions(text: str) -> list[PartitionInfo]:
    """The same sinfo output grouped by partition (in sinfo's order)."""
    parts: dict[str, PartitionInfo] = {}
    for line in _lines(text):
        node, partition, avail, limit, _, _, _, gres, _ = _split(line, len(SINFO_FIELDS), "sinfo")
        name = partition.rstrip("*")
        known = parts.get(name)
        gres_list = (known.gres if known else ()) + ((gres,) if _value(gres) else ())
        parts[name] = PartitionInfo(
            name=name, available=avail.lower() == "up", default=partition.endswith("*"),
            time_limit_s=parse_limit(limit), nodes=(known.nodes if known else ()) + (node,),
            gres=tuple(dict.fromkeys(gres_list)))
    return list(parts.values())


def _int(text: str) -> int:
    digits = text.rstrip("+")
    return int(digits) if digits.isdigit() else 0


def parse_key_values(text: str) -> dict[str, str]:
    """`Key = Value` lines (scontrol show config) as a dict."""
    pairs = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


def parse_job_id(text: str) -> str:
    """`sbatch --parsable` prints `<id>` or `<id>;<cluster>`."""
    job_id = text.strip().split(";")[0]
    if not job_id or not job_id.replace("_", "").isdigit():
        raise SlurmParseError(f"sbatch printed no job id: {text.strip()!r}")
    return job_id


def parse_ping(text: str) -> bool:
    """`scontrol ping`: True when a slurmctld answers UP."""
    return any("is UP" in line for line in text.splitlines())


def parse_list(text: str) -> list[str]:
    """One value per line (sacctmgr -n -P with a single field)."""
    return [line.strip() for line in _lines(text)]

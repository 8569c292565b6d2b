"""The Slurm adapter: the only code in tsslurm that runs Slurm commands.

Actions (submit, cancel, hold, release, node state, cluster registration) fail loudly with a
`SlurmError` carrying argv, exit code, stdout and stderr. Observations degrade: a failed `poll`
logs, keeps the last-known states and marks the result stale. Polling is batched: one `squeue`
for every job still live, one `sacct` (or `sacct -c` without slurmdbd) for those that ended or
left squeue; final states are cached and never asked for again. Every command has a timeout."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import msgspec

from tsslurm.errors import UserError
from tsslurm.slurm import parse
from tsslurm.slurm.parse import JobStatus, JobTimes, NodeInfo, PartitionInfo
from tsslurm.slurm.render import JobSpec, render_job

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 20.0
UNCONFIRMED_S = 30.0
NODE_STATES = frozenset({"DOWN", "DRAIN", "RESUME", "UNDRAIN", "IDLE", "FAIL"})
_ALREADY_DONE = ("already completing or completed", "Job has already finished")


class SlurmError(UserError):
    """A Slurm command failed: carries argv, exit code (None when it did not run to an end: timed
    out, not installed, no configuration), stdout and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str,
                 message: str = ""):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        detail = message or (stderr.strip() or stdout.strip() or "no output")
        status = "failed" if returncode is None else f"failed (exit {returncode})"
        super().__init__(f"`{' '.join(self.argv)}` {status}: {detail}")


class PollResult(msgspec.Struct, frozen=True):
    """States of the polled jobs. `stale`: some come from an earlier poll because this one failed
    (`error` says why); ids Slurm no longer knows and never reported are in `missing`."""

    statuses: dict[str, JobStatus]
    stale: bool = False
    error: str | None = None
    missing: tuple[str, ...] = ()


class SlurmAdapter:
    """Runs Slurm's client commands against one cluster (the one `env`'s SLURM_CONF names)."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic):
        self.env = dict(os.environ if env is None else env)
        self.timeout_s = timeout_s
        self.clock = clock
        self._final: dict[str, JobStatus] = {}
        self._last: dict[str, JobStatus] = {}
        self._unconfirmed: dict[str, float] = {}
        self._config: dict[str, str] | None = None

    @classmethod
    def for_conf(cls, slurm_conf: str | os.PathLike[str], **kwargs: float) -> SlurmAdapter:
        """An adapter bound to the cluster described by `slurm_conf`."""
        return cls({**os.environ, "SLURM_CONF": str(Path(slurm_conf).resolve())}, **kwargs)

    def run(self, argv: Sequence[str], stdin: str | None = None,
            timeout_s: float | None = None) -> str:
        """Run one Slurm command; its stdout, or a SlurmError."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        conf = self.env.get("SLURM_CONF")
        if conf and not Path(conf).is_file():
            raise SlurmError(argv, None, "", "", f"SLURM_CONF={conf} does not exist (Slurm would "
                             "retry for a minute); start the cluster or fix the path")
        started = time.monotonic()
        try:
            done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                                  timeout=limit, env=self.env, check=False)
        except FileNotFoundError:
            raise SlurmError(argv, None, "", "", f"{argv[0]} not found (is Slurm installed?)") from None
        except subprocess.TimeoutExpired as expired:
            raise SlurmError(argv, None, _text(expired.stdout), _text(expired.stderr),
                             f"no answer within {limit:g} s (is slurmctld up?)") from None
        log.debug("%s: exit %d in %.3f s", argv[0], done.returncode, time.monotonic() - started)
        if done.returncode != 0:
            raise SlurmError(argv, done.returncode, done.stdout, done.stderr)
        return done.stdout

    # actions

    def submit(self, script: str, extra_args: Sequence[str] = ()) -> str:
        """Submit a batch script (given as text, on sbatch's stdin); returns the job id."""
        argv = ["sbatch", "--parsable", *extra_args]
        out = self.run(argv, stdin=script)
        try:
            return parse.parse_job_id(out)
        except parse.SlurmParseError as error:
            raise SlurmError(argv, 0, out, "", str(error)) from None

    def submit_job(self, spec: JobSpec) -> str:
        """Render `spec` with its partition's template, create its log directory, submit it."""
        script = render_job(spec)
        Path(spec.log_dir).mkdir(parents=True, exist_ok=True)
        return self.submit(script)

    def cancel(self, job_ids: Iterable[str], signal: str | None = None,
               batch_only: bool = False) -> None:
        """scancel the jobs (or send them `signal`, to the batch shell only with `batch_only`).

        Jobs that already ended are not an error."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return
        argv = ["scancel", *([f"--signal={signal}"] if signal else []),
                *(["--batch"] if batch_only else []), *ids]
        try:
            self.run(argv)
        except SlurmError as error:
            if not _only_already_done(error.stderr):
                raise

    def hold(self, job_ids: Iterable[str]) -> None:
        self._scontrol_jobs("hold", job_ids)

    def release(self, job_ids: Iterable[str]) -> None:
        self._scontrol_jobs("release", job_ids)

    def _scontrol_jobs(self, verb: str, job_ids: Iterable[str]) -> None:
        ids = list(dict.fromkeys(job_ids))
        if ids:
            self.run(["scontrol", verb, ",".join(ids)])

    def set_node_state(self, node: str, state: str, reason: str | None = None) -> None:
        """scontrol update NodeName=.. State=DOWN|DRAIN|RESUME.. (DOWN and DRAIN need a reason)."""
        wanted = state.upper()
        if wanted not in NODE_STATES:
            raise UserError(f"node state {state!r} is not one of {', '.join(sorted(NODE_STATES))}")
        if wanted in {"DOWN", "DRAIN", "FAIL"} and not reason:
            raise UserError(f"setting a node {wanted} needs a reason")
        argv = ["scontrol", "update", f"NodeName={node}", f"State={wanted}"]
        self.run(argv + ([f"Reason={reason}"] if reason else []))

    def reconfigure(self) -> None:
        """Make slurmctld and every slurmd re-read slurm.conf."""
        self.run(["scontrol", "reconfigure"])
        self._config = None

    def register_cluster(self, name: str) -> bool:
        """Add `name` to the accounting database unless it is there; True when added."""
        listed = parse.parse_list(self.run(["sacctmgr", "-n", "-P", "list", "cluster",
                                            "format=Cluster"]))
        if name in listed:
            return False
        self.run(["sacctmgr", "-i", "add", "cluster", name])
        return True

    # observations

    def ping(self, timeout_s: float = 5.0) -> bool:
        """True when slurmctld answers."""
        try:
            return parse.parse_ping(self.run(["scontrol", "ping"], timeout_s=timeout_s))
        except SlurmError:
            return False

    def jobs(self, name_prefix: str = "") -> list[JobStatus]:
        """Every job squeue shows (all states), optionally only those whose name starts so."""
        out = self.run(["squeue", "-h", "-t", "all", "-o", parse.SQUEUE_FORMAT])
        return [job for job in parse.parse_squeue(out).values() if job.name.startswith(name_prefix)]

    def nodes(self) -> list[NodeInfo]:
        return parse.parse_sinfo_nodes(self._sinfo())

    def partitions(self) -> list[PartitionInfo]:
        return parse.parse_sinfo_partitions(self._sinfo())

    def _sinfo(self) -> str:
        return self.run(["sinfo", "-h", "-N", "-o", parse.SINFO_FORMAT])

    def config(self) -> dict[str, str]:
        """`scontrol show config` (cached: it does not change under a running cluster)."""
        if self._config is None:
            self._config = parse.parse_key_values(self.run(["scontrol", "show", "config"]))
        return self._config

    @property
    def has_accounting(self) -> bool:
        """True with slurmdbd (real sacct); False means finished jobs come from `sacct -c`."""
        return self.config().get("AccountingStorageType", "") == "accounting_storage/slurmdbd"

    def job_history(self, partition: str, since: datetime) -> list[JobTimes]:
        """Every job of `partition` (all users) that was pending, running or ended at some time
        since `since`, from sacct's accounting record (needs slurmdbd: see `has_accounting`).
        The explicit state list makes sacct include jobs that were still pending."""
        argv = ["sacct", "-n", "-P", "-X", "--allusers", "--partition", partition,
                "--state", parse.HISTORY_STATES, "-S", since.strftime("%Y-%m-%dT%H:%M:%S"),
                "-E", "now", "-o", ",".join(parse.HISTORY_FIELDS)]
        out = self.run(argv)
        try:
            return parse.parse_sacct_history(out)
        except parse.SlurmParseError as error:
            raise SlurmError(argv, 0, out, "", f"unexpected output: {error}") from None

    def poll(self, job_ids: Iterable[str]) -> PollResult:
        """States of `job_ids`: one squeue for the live ones, one sacct for those that ended."""
        ids = list(dict.fromkeys(job_ids))
        fresh, error = self._poll_live([job_id for job_id in ids if job_id not in self._final])
        if error:
            log.warning("slurm poll failed, keeping last-known states: %s", error)
        for status in fresh.values():
            self._remember(status)
        return self._result(ids, fresh, error)

    def _poll_live(self, ids: list[str]) -> tuple[dict[str, JobStatus], str | None]:
        if not ids:
            return {}, None
        try:
            statuses = self._squeue(ids)
        except SlurmError as failure:
            return {}, str(failure)
        ended = [job_id for job_id in ids if job_id not in statuses or statuses[job_id].final]
        if ended:
            try:
                finished = self._sacct(ended)
            except SlurmError as failure:
                return statuses, str(failure)
            statuses.update({k: v for k, v in finished.items() if v.final or k not in statuses})
        return statuses, None

    def _squeue(self, ids: list[str]) -> dict[str, JobStatus]:
        argv = ["squeue", "-h", "-t", "all", "-o", parse.SQUEUE_FORMAT, "-j", ",".join(ids)]
        try:
            out = self.run(argv)
        except SlurmError as error:
            if "Invalid job id" in error.stderr:
                return {}
            raise
        return _parsed(argv, out, parse.parse_squeue)

    def _sacct(self, ids: list[str]) -> dict[str, JobStatus]:
        jobcomp = not self.has_accounting
        fields = parse.JOBCOMP_FIELDS if jobcomp else parse.SACCT_FIELDS
        argv = ["sacct", *(["-c"] if jobcomp else []), "-n", "-P", "-X",
                "-o", ",".join(fields), "-j", ",".join(ids)]
        out = self.run(argv)
        return _parsed(argv, out, lambda text: parse.parse_sacct(text, jobcomp=jobcomp))

    def _remember(self, status: JobStatus) -> None:
        """Cache final states: at once from sacct; from squeue (no exit code) only once sacct
        has missed the job for UNCONFIRMED_S (accounting lags behind a busy slurmdbd, or never
        records the job)."""
        job_id = status.job_id
        self._last[job_id] = status
        if status.final and status.source == "squeue":
            self._unconfirmed.setdefault(job_id, self.clock())
        if status.final and (status.source != "squeue"
                             or self.clock() - self._unconfirmed[job_id] >= UNCONFIRMED_S):
            self._final[job_id] = status
            self._last.pop(job_id, None)
            self._unconfirmed.pop(job_id, None)

    def _result(self, ids: list[str], fresh: dict[str, JobStatus], error: str | None) -> PollResult:
        statuses: dict[str, JobStatus] = {}
        missing = []
        for job_id in ids:
            known = self._final.get(job_id) or fresh.get(job_id) or self._last.get(job_id)
            if known is None:
                missing.append(job_id)
            else:
                statuses[job_id] = known
        return PollResult(statuses, stale=error is not None, error=error, missing=tuple(missing))


def _parsed(argv: Sequence[str], out: str, parser) -> dict[str, JobStatus]:
    try:
        return parser(out)
    except parse.SlurmParseError as error:
        raise SlurmError(argv, 0, out, "", f"unexpected output: {error}") from None


def _only_already_done(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return bool(lines) and all(any(m in line for m in _ALREADY_DONE) for line in lines)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")

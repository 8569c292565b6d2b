"""Records real Slurm output for the parser tests (tests/unit/test_slurm_parse.py).

Run against a throw-away dev cluster, never a shared one (it drains and downs its spare node):

    tsslurm dev-cluster up --dir /tmp/rec-acct --port-base 17800 --enforce-memory
    SLURM_CONF=/tmp/rec-acct/slurm.conf .venv/bin/python tests/data/slurm/record.py accounting
    tsslurm dev-cluster down --dir /tmp/rec-acct --wipe
    (and the same with --no-accounting, tag `jobcomp`)

Each scenario job is named `rec-<scenario>`; the tests look jobs up by those names. Writes
tests/data/slurm/<tag>/*.txt: squeue and sinfo at three moments, sacct (or sacct -c) at the end,
and `scontrol show config`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tsslurm.slurm import parse
from tsslurm.slurm.adapter import SlurmAdapter

HERE = Path(__file__).parent
QUICK = {
    "completed": (["-p", "cpu"], "exit 0"),
    "failed": (["-p", "cpu"], "exit 3"),
    "killed": (["-p", "cpu"], "kill -KILL $$"),
    "timeout": (["-p", "cpu", "--time=1"], "sleep 300"),
    "cancelled": (["-p", "cpu"], "sleep 300"),
    "held": (["-p", "cpu", "--hold"], "exit 0"),
    "later": (["-p", "cpu", "--begin=now+1hour"], "exit 0"),
    "gpu-h100": (["-p", "h100", "--gres=gpu:h100:2"], "echo $CUDA_VISIBLE_DEVICES"),
    "array": (["-p", "cpu", "--array=0-2"], "exit 0"),
    "overmem": (["-p", "cpu", "--mem=20M"],
            "python3 -c 'import time; x = bytearray(400 << 20); time.sleep(20)'"),
    "nodefail": (["-p", "spare", "--gres=gpu:a100:8"], "sleep 300"),
}


def submit(slurm: SlurmAdapter, name: str, args: list[str], command: str) -> str:
    script = f"#!/bin/bash\n{command}\n"
    return slurm.submit(script, ["--job-name", f"rec-{name}", "--no-requeue",
                                 "--output=/dev/null", *args])


def wait_for(slurm: SlurmAdapter, ids: dict[str, str], want: dict[str, str], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        states = slurm.poll(ids[n] for n in want).statuses
        if all(states[ids[n]].state == s for n, s in want.items() if ids[n] in states):
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {want}")


def record(slurm: SlurmAdapter, out: Path, stem: str) -> None:
    (out / f"squeue_{stem}.txt").write_text(
        slurm.run(["squeue", "-h", "-t", "all", "-o", parse.SQUEUE_FORMAT]))
    (out / f"sinfo_{stem}.txt").write_text(slurm.run(["sinfo", "-h", "-N", "-o", parse.SINFO_FORMAT]))


def main(tag: str) -> None:
    slurm = SlurmAdapter()
    out = HERE / tag
    out.mkdir(exist_ok=True)
    (out / "show_config.txt").write_text(slurm.run(["scontrol", "show", "config"]))
    ids = {name: submit(slurm, name, args, cmd) for name, (args, cmd) in QUICK.items()}
    ids["waiting"] = submit(slurm, "waiting", ["-p", "cpu", f"--dependency=afterok:{ids['held']}"],
                            "exit 0")
    ids["resources"] = submit(slurm, "resources", ["-p", "spare", "--gres=gpu:a100:1"], "exit 0")
    wait_for(slurm, ids, {"cancelled": "RUNNING", "nodefail": "RUNNING", "timeout": "RUNNING"}, 30)
    time.sleep(3)
    record(slurm, out, "live")
    record_sacct(slurm, out, list(ids.values()), "live")
    slurm.cancel([ids["cancelled"]])
    slurm.set_node_state("spare-1", "DRAIN", "recording a drained node")
    time.sleep(3)
    record(slurm, out, "draining")
    slurm.set_node_state("spare-1", "UNDRAIN")
    slurm.set_node_state("spare-1", "DOWN", "recording a failed node")
    wait_for(slurm, ids, {"nodefail": "NODE_FAIL"}, 30)
    time.sleep(3)
    record(slurm, out, "down")
    slurm.cancel([ids["resources"], ids["held"], ids["later"], ids["waiting"]])
    if any(n.name == "spare-1" and n.state != "idle" for n in slurm.nodes()):
        slurm.set_node_state("spare-1", "RESUME")
    wait_for(slurm, ids, {"timeout": "TIMEOUT"}, 150)
    time.sleep(3)
    record(slurm, out, "final")
    record_sacct(slurm, out, list(ids.values()), "final")
    print(f"recorded {len(ids)} jobs into {out}")


def record_sacct(slurm: SlurmAdapter, out: Path, ids: list[str], stem: str) -> None:
    jobcomp = not slurm.has_accounting
    fields = parse.JOBCOMP_FIELDS if jobcomp else parse.SACCT_FIELDS
    argv = ["sacct", *(["-c"] if jobcomp else []), "-n", "-P", "-X", "-o", ",".join(fields),
            "-j", ",".join(ids)]
    (out / f"sacct_{stem}.txt").write_text(slurm.run(argv))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "accounting")

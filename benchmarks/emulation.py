"""The emulation benchmark (issue 2): the real system under a real trace against the simulator.

For each policy it brings up a deployment of mock engines as real Slurm jobs on the dev cluster
(`tsslurm up --backend slurm`, profiles/emulation-mock.yaml), waits for the pools' minimum to
serve, replays a bursty window of the Azure code trace through the real client (`tsslurm
replay`), and takes the deployment down. Then `tsslurm simulate` runs the same scenario (profile,
window, scale, speedup) for every policy, and the figures are printed side by side with the
target (simulator within 5 points of SLO attainment and 10 % of GPU time, same ranking).

    .venv/bin/python benchmarks/emulation.py [--policies tokenscale,aibrix,distserve]
        [--window 480:960] [--speedup 3] [--out /tmp/emulation]

Also prints the start-up the dev cluster showed (submit -> worker registered) next to the
profile's queue wait + model load, and the load average around each replay."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tsslurm.broker.status import read_status
from tsslurm.broker.store import read_jobs
from tsslurm.profile import load_profile
from tsslurm.replay.compare import format_table, rows, same_ranking

TRACE = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
PROFILE = REPO / "profiles" / "emulation-mock.yaml"
TSSLURM = str(Path(sys.executable).parent / "tsslurm")
CLUSTER = REPO / ".devcluster"


def run(*args: str, timeout_s: float = 900.0, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([TSSLURM, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tsslurm {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def wait_serving(state: Path, process: subprocess.Popen[bytes], minimum: dict[str, int],
                 timeout_s: float = 120.0) -> None:
    """Until the deployment serves with every pool at its minimum ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(state)
        if status is not None and status.phase == "serving":
            ready = {role: sum(p.ready for p in status.pools if p.role == role) for role in minimum}
            if all(ready[role] >= count for role, count in minimum.items()):
                return
        if process.poll() is not None:
            raise SystemExit(f"tsslurm up exited ({process.returncode}); see {state.parent}/up.log")
        time.sleep(0.25)
    raise SystemExit(f"the deployment in {state} did not serve within {timeout_s:.0f} s")


def startup_seconds(state: Path, since: float) -> list[float]:
    """Submit -> registered of the jobs submitted during the replay."""
    return [j.ready_at - j.submitted_at for j in read_jobs(state / "broker.sqlite")
            if j.submitted_at and j.ready_at and j.submitted_at >= since]


def emulate(policy: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    root = args.out / policy
    shutil.rmtree(root, ignore_errors=True)  # a state directory of an earlier run would be adopted
    root.mkdir(parents=True)
    state = root / "state"
    prefix = f"emu{uuid.uuid4().hex[:6]}-{policy}"
    pools = load_profile(str(PROFILE)).pools
    minimum = {"prefill": pools.prefill.min, "decode": pools.decode.min,
               "convertible": pools.convertible.min}
    with open(root / "up.log", "wb") as log:
        process = subprocess.Popen([TSSLURM, "up", "--profile", str(PROFILE), "--backend", "slurm",
                                    "--policy", policy, "--state-dir", str(state), "--job-prefix",
                                    prefix], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_serving(state, process, {r: n for r, n in minimum.items() if n})
        load_before, started = os.getloadavg()[0], time.time()
        run("replay", "--trace", str(args.trace), "--window", args.window, "--speedup",
            str(args.speedup), "--state-dir", str(state), "--json", str(root / "replay.json"),
            "--quiet", env=env)
        load_after = os.getloadavg()[0]
        report = json.loads((root / "replay.json").read_text())
        report["benchmark"] = {"load_before": load_before, "load_after": load_after,
                               "startup_s": startup_seconds(state, started),
                               "params": runner_params(state)}
        return report
    finally:
        subprocess.run([TSSLURM, "down", "--now", "--state-dir", str(state)], env=env,
                       capture_output=True, timeout=180, check=False)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def runner_params(state: Path) -> dict[str, Any]:
    """The policy parameters the deployment's runner used (the step log's first record)."""
    with open(state / "steps.jsonl") as steps:
        return json.loads(steps.readline()).get("params", {})


def simulator_params(policy: str) -> dict[str, Any]:
    """The parameters `tsslurm simulate` uses now: asked of a fresh process, since this one
    imported the policies when it started (another engineer may have changed them since)."""
    code = ("import json, msgspec; from tsslurm.profile import load_profile; "
            "from tsslurm.sim.run import make_runner; print(json.dumps(msgspec.to_builtins("
            f"make_runner({policy!r}, load_profile({str(PROFILE)!r})).params)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def code_changes(policies: list[str], emulated: dict[str, dict[str, Any]]) -> list[str]:
    """Policies whose parameters differ between the emulation and the simulation (a change to
    tsslurm/policy landed during the benchmark: the comparison would be unfair)."""
    changed = []
    for policy in policies:
        now = simulator_params(policy)
        if now != emulated[policy]["benchmark"]["params"]:
            changed.append(f"{policy}: emulated with {emulated[policy]['benchmark']['params']}, "
                           f"simulated with {now}")
    return changed


def simulate(policies: list[str], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / "simulate.json"
    run("simulate", "--trace", str(args.trace), "--profile", str(PROFILE), "--policy",
        ",".join(policies), "--window", args.window, "--speedup", str(args.speedup), "--json",
        str(out), "--quiet")
    return json.loads(out.read_text())


def summary(emulated: dict[str, dict[str, Any]], simulated: dict[str, Any]) -> str:
    table = rows(emulated, simulated)
    part = load_profile(str(PROFILE)).partitions[0]
    lines = [format_table(table), ""]
    for policy, report in emulated.items():
        bench, replay = report["benchmark"], report["replay"]
        startup = bench["startup_s"]
        mean = (f"mean {sum(startup) / len(startup):.2f} s, max {max(startup):.2f} s over "
                f"{len(startup)} jobs") if startup else "-"
        lines.append(f"{policy}: load average {bench['load_before']:.1f} -> "
                     f"{bench['load_after']:.1f}; submit->ready {mean} (profile: "
                     f"{part.queue_wait.mean_s + part.model_load_s:.2f} s); send lag p99 "
                     f"{replay['send_lag_p99_ms']} ms")
    lines.append(f"ranking by SLO attainment matches: {'yes' if same_ranking(table) else 'NO'}; "
                 f"every policy within target: {'yes' if all(r.within for r in table) else 'NO'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default="tokenscale,aibrix,distserve")
    parser.add_argument("--window", default="480:960")
    parser.add_argument("--speedup", type=float, default=3.0)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tsslurm-emulation"))
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    began = time.monotonic()
    print(run("dev-cluster", "up", timeout_s=600).strip().splitlines()[-1])
    env = {**os.environ, "SLURM_CONF": str(CLUSTER / "slurm.conf")}
    emulated = {}
    for policy in policies:
        emulated[policy] = emulate(policy, args, env)
        print(f"emulated {policy} in {time.monotonic() - began:.0f} s", flush=True)
    simulated = simulate(policies, args)
    text = summary(emulated, simulated)
    for change in code_changes(policies, emulated):
        text += f"\nWARNING: the policy changed during the benchmark ({change}); run it again"
    (args.out / "comparison.txt").write_text(text + "\n")
    print(f"\nwindow {args.window} of {args.trace.name}, speedup {args.speedup:g}, "
          f"{simulated['requests']} requests; whole benchmark {time.monotonic() - began:.0f} s\n")
    print(text)


if __name__ == "__main__":
    main()

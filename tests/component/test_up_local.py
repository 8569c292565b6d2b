"""`tsslurm up --backend local` with mock engines, through the real command line: the policy's
first decision becomes worker processes, requests are served, status/metrics/event log tell what
happened, the recorded snapshots replay to the same decisions, `down` drains and leaves nothing
running, and a broker killed with -9 is replaced by one that re-adopts its workers while a
client's request in flight completes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.request
from pathlib import Path

import pytest
from up_support import StreamInBackground, Up, counts, mock_profile, ready, replay_mismatches

from tsslurm.launcher.engines.mock import mock_continuation

pytestmark = pytest.mark.timeout(150)

FAST = {"tick": "max_retries: 3=>max_retries: 3\n  tick_s: 0.5"}


def _work(count: int, seed: int, max_tokens: int = 40) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(32, 127) for _ in range(rng.randrange(20, 200))], max_tokens)
            for _ in range(count)]


async def _serve(up: Up, work: list[tuple[list[int], int]], prefix: str) -> list:
    client = up.client(timeout_s=60)
    try:
        return await asyncio.gather(*(client.generate(p, n, request_id=f"{prefix}-{i}")
                                      for i, (p, n) in enumerate(work)))
    finally:
        await client.close()


def _worker_pids(up: Up) -> list[int]:
    pids = []
    for path in (up.state / "local-jobs").glob("local-*.json"):
        pids.append(json.loads(path.read_text())["pid"])
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


@pytest.fixture
def up(tmp_path: Path):
    made: list[Up] = []

    def make(*args: str, **replacements: str) -> Up:
        made.append(Up(tmp_path / f"up{len(made)}", mock_profile(**FAST, **replacements),
                       "--backend", "local", *args))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_up_serves_reports_and_down_leaves_nothing_running(up) -> None:
    d = up("--metrics-port", "0")
    d.start()
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "prefill and decode")
    assert status.backend == "local" and status.backend_why == "asked for with --backend"
    assert counts(status, "convertible") == {"ready": 0, "starting": 0, "pending": 0,
                                             "draining": 0}, "the profile's convertible min is 0"
    pids = _worker_pids(d)
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)

    work = _work(24, seed=1)
    results = asyncio.run(_serve(d, work, "r"))
    assert [r.token_ids for r in results] == [mock_continuation(p, n) for p, n in work]
    status = d.wait(lambda s: s.slo.finished >= 24, "24 finished requests in the status")
    assert status.rates[1].input_tokens_per_s > 0 and status.velocities["prefill"] > 0
    assert status.slo.attainment is not None and status.decisions
    assert {j.state for j in status.jobs} == {"ready"}

    text = d.cli("status")
    assert text.returncode == 0 and "prefill" in text.stdout and "local-1" in text.stdout
    as_json = json.loads(d.cli("status", "--json").stdout)
    assert as_json["alive"] is True and len(as_json["jobs"]) == 2
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{status.metrics_port}/metrics",
                                     timeout=5).read().decode()
    assert 'tsslurm_pool_instances{partition="a100",role="prefill",state="ready"} 1.0' in scraped
    assert "tsslurm_ttft_seconds_count 24.0" in scraped

    done = d.down()
    assert done.returncode == 0, done.stderr
    assert d.process.returncode == 0 and "the deployment is down" in done.stderr
    assert d.status().phase == "stopped" and not d.status().jobs
    assert not any(_alive(pid) for pid in pids), "down left a worker running"
    assert {job.state for job in d.jobs()} == {"ended"}
    transitions = [(e["job_id"], e["new"]) for e in d.events("job") if e["new"] != "final"]
    for job_id in ("local-1", "local-2"):
        assert [new for j, new in transitions if j == job_id] == \
            ["pending", "starting", "ready", "draining", "ended"]
    replayed, mismatches = replay_mismatches(d.state / "steps.jsonl")
    assert replayed >= 3 and not mismatches, "the recorded snapshots replay to the same decisions"


def test_a_broker_killed_with_9_is_replaced_and_readopts_its_workers(up) -> None:
    d = up()
    d.start()
    d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "prefill and decode")
    jobs = sorted(j.job_id for j in d.status().jobs)
    prompt = [random.Random(5).randrange(32, 127) for _ in range(80)]
    stream = StreamInBackground(d, prompt, 400, timeout_s=90)
    d.kill9()
    d.start()
    status = d.wait(lambda s: ready("prefill")(s) and ready("decode")(s), "workers back")
    assert stream.finish() == mock_continuation(prompt, 400)
    assert sorted(j.job_id for j in status.jobs) == jobs, "re-adopted, none submitted twice"
    assert [e for e in d.events("adopted")][-1]["jobs"] == jobs
    assert not [e for e in d.events("job") if e["new"] == "pending"
                and e["reason"] == "submitted" and e["job_id"] not in jobs]
    assert d.down().returncode == 0
    assert not any(_alive(pid) for pid in _worker_pids(d))


def test_clear_errors_and_down_without_a_broker(up, tmp_path: Path) -> None:
    d = up()
    nothing = d.cli("status")
    assert nothing.returncode == 1 and "no deployment status" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    d.start()
    d.wait(ready("decode"), "a decoder")
    again = d.cli("up", "--backend", "local")
    assert again.returncode == 1 and "already up" in again.stderr and "Traceback" not in again.stderr
    bad = d.cli("up", "--backend", "local", "--policy", "no-such-policy")
    assert bad.returncode == 1 and "no-such-policy" in bad.stderr
    pids = _worker_pids(d)
    d.kill9()
    assert all(_alive(pid) for pid in pids), "workers outlive their broker"
    gone = d.cli("down")
    assert gone.returncode == 0 and "no broker is running" in gone.stderr, gone.stderr
    for pid in pids:
        _wait_gone(pid)
    assert {job.state for job in d.jobs()} == {"ended"}


def _wait_gone(pid: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        time.sleep(0.1)


def test_detach_runs_a_daemon_that_down_stops(up) -> None:
    d = up()
    started = d.cli("up", "--backend", "local", "--detach", timeout_s=90)
    assert started.returncode == 0, started.stderr
    assert "up in the background" in started.stderr
    d.wait(ready("decode"), "a decoder")
    pid = int((d.state / "broker.pid").read_text())
    assert _alive(pid)
    with d.sync_client(timeout_s=30) as client:
        assert client.generate([65, 66, 67], 5).token_ids == mock_continuation([65, 66, 67], 5)
    assert d.cli("down").returncode == 0
    _wait_gone(pid)

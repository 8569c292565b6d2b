"""Node faults on the dev cluster's spare node: a drained node keeps a job pending (with the
reason visible) until RESUME; a node set DOWN under a running job ends it NODE_FAIL.

Only these tests touch the spare node (its own partition, `spare`), so other tests never see it
change; a lock file serialises them across concurrent test sessions on one machine."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_helpers import SPARE_NODE, partition, shell_job, wait_for

from tsslurm.devcluster.layout import TEST_REASON_PREFIX
from tsslurm.slurm.parse import FINAL_STATES

LOCK = Path("/tmp/tsslurm-spare-node.lock")


@pytest.fixture
def spare_node(slurm) -> Iterator[str]:
    """The spare node, ours alone for the test, idle before and resumed after."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _resume_if_needed(slurm.adapter)
        try:
            yield SPARE_NODE
        finally:
            slurm.adapter.cancel(j.job_id for j in slurm.adapter.jobs(slurm.prefix) if not j.final)
            _resume_if_needed(slurm.adapter)


def _node(adapter, name: str):
    return next(node for node in adapter.nodes() if node.name == name)


def _resume_if_needed(adapter) -> None:
    if _node(adapter, SPARE_NODE).state not in {"idle", "mixed", "allocated"}:
        adapter.set_node_state(SPARE_NODE, "RESUME")


@pytest.mark.timeout(60)
def test_drained_node_keeps_a_job_pending_until_resumed(slurm, spare_node: str,
                                                        tmp_path: Path) -> None:
    adapter = slurm.adapter
    adapter.set_node_state(spare_node, "DRAIN", f"{TEST_REASON_PREFIX} {slurm.prefix}")
    drained = _node(adapter, spare_node)
    assert drained.state.startswith("drain") and drained.reason.endswith(slurm.prefix)
    spec = shell_job(slurm.name("waits"), partition("spare"), tmp_path, "echo ran")
    job_id = adapter.submit_job(spec)
    deadline = time.monotonic() + 10
    while (status := adapter.poll([job_id]).statuses[job_id]).reason in {"", "None"}:
        assert time.monotonic() < deadline, "no pending reason after 10 s"
        time.sleep(0.2)
    time.sleep(3)
    status = adapter.poll([job_id]).statuses[job_id]
    assert status.pending and "DRAINED" in status.reason
    adapter.set_node_state(spare_node, "RESUME")
    done = wait_for(adapter, job_id, FINAL_STATES, timeout_s=40, accounted=True)
    assert (done.state, done.exit_code, done.nodes) == ("COMPLETED", 0, spare_node)


@pytest.mark.timeout(60)
def test_node_down_under_a_running_job_ends_it_node_fail(slurm, spare_node: str,
                                                         tmp_path: Path) -> None:
    adapter = slurm.adapter
    spec = shell_job(slurm.name("victim"), partition("spare"), tmp_path, "sleep 300")
    job_id = adapter.submit_job(spec)
    wait_for(adapter, job_id, {"RUNNING"})
    adapter.set_node_state(spare_node, "DOWN", f"{TEST_REASON_PREFIX} {slurm.prefix}")
    done = wait_for(adapter, job_id, FINAL_STATES, timeout_s=20)
    assert done.state == "NODE_FAIL"
    assert _node(adapter, spare_node).state == "down"


@pytest.mark.timeout(30)
def test_sinfo_shows_the_dev_cluster_shape(slurm) -> None:
    nodes = {node.name: node for node in slurm.adapter.nodes()}
    parts = {part.name: part for part in slurm.adapter.partitions()}
    assert {"a100", "h100"} <= set(parts)
    for kind in ("a100", "h100"):
        assert parts[kind].available and parts[kind].gres == (f"gpu:{kind}:8",)
        assert all(nodes[name].cpus >= 16 for name in parts[kind].nodes)

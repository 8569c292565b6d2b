"""Shared test configuration: tier markers from the directory, per-test state directories.

Tiers (docs/design.md): tests/unit (pure), tests/component (real processes and sockets),
tests/slurm (the real Slurm cluster), tests/vllm (the real vLLM engine)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tsslurm.slurm.adapter import SlurmAdapter

TIER_MARKERS = {"component": "component", "slurm": "slurm", "vllm": "vllm"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[tier]))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh deployment state directory, private to the test (0700 like the real one)."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


# --- the slurm tier: the dev cluster (`tsslurm dev-cluster up`) or an existing cluster ---------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slurm-conf", default=None,
                     help="slurm.conf of an existing cluster for tests/slurm (default: "
                          "$TSSLURM_SLURM_CONF, else the dev cluster's .devcluster/slurm.conf)")


def slurm_conf_path(config: pytest.Config) -> Path:
    chosen = config.getoption("--slurm-conf") or os.environ.get("TSSLURM_SLURM_CONF")
    if chosen:
        return Path(chosen).expanduser().resolve()
    from tsslurm.devcluster.cluster import default_root

    return default_root() / "slurm.conf"


@pytest.fixture(scope="session")
def slurm_cluster(pytestconfig: pytest.Config) -> Path:
    """The slurm.conf of a reachable cluster; FAILS (never skips) when there is none."""
    conf = slurm_conf_path(pytestconfig)
    hint = ("run `tsslurm dev-cluster up` (or `make test`), or point the tests at a cluster "
            "with --slurm-conf / TSSLURM_SLURM_CONF")
    if not conf.is_file():
        pytest.fail(f"no Slurm cluster for the slurm tier: {conf} does not exist; {hint}",
                    pytrace=False)
    if not SlurmAdapter.for_conf(conf).ping():
        pytest.fail(f"the slurmctld of {conf} does not answer `scontrol ping`; {hint}",
                    pytrace=False)
    return conf


@dataclass
class SlurmForTest:
    """A SlurmAdapter on the test cluster plus this test's own job-name prefix."""

    adapter: SlurmAdapter
    prefix: str
    conf: Path

    def name(self, suffix: str) -> str:
        """A job name of this test's: `<prefix>-<suffix>`."""
        return f"{self.prefix}-{suffix}"


@pytest.fixture
def slurm(slurm_cluster: Path, request: pytest.FixtureRequest) -> Iterator[SlurmForTest]:
    """The cluster for one test; cancels the jobs named with the test's prefix at teardown."""
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:24]
    handle = SlurmForTest(SlurmAdapter.for_conf(slurm_cluster),
                          f"t{uuid.uuid4().hex[:8]}-{label}", slurm_cluster)
    yield handle
    adapter = handle.adapter
    leftover = [job.job_id for job in adapter.jobs(handle.prefix + "-") if not job.final]
    adapter.cancel(leftover)

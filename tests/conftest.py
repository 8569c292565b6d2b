"""Shared test configuration: tier markers from the directory, per-test state directories.

Tiers (docs/design.md): tests/unit (pure), tests/component (real processes and sockets),
tests/slurm (the real Slurm cluster), tests/vllm (the real vLLM engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

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

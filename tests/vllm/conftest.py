"""Fixtures of the vLLM tier: the tiny model built once per session and an event loop per module
(the engines a module fixture starts live on it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsslurm.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for a module: its engines' output handlers run on it."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner

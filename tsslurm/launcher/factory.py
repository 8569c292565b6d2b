"""Which engine a worker runs, from its profile: the mock engine, or vLLM (imported only here, only
when asked for, so a mock worker never loads torch)."""

from __future__ import annotations

from pathlib import Path

from tsslurm.launcher.engines.base import Engine
from tsslurm.launcher.engines.mock import MockEngine
from tsslurm.launcher.settings import LauncherSettings, SettingsError
from tsslurm.profile.schema import Partition, Profile, UnknownPartition

DEFAULT_MAX_BATCHED_TOKENS = 8192


def choose_partition(profile: Profile, name: str | None) -> Partition:
    try:
        return profile.partition(name)
    except UnknownPartition as unknown:
        raise SettingsError(f"TSSLURM_PARTITION={name!r} is not in the profile ({unknown.known})") from None


def create_engine(profile: Profile, partition: Partition, settings: LauncherSettings,
                  state_dir: Path) -> Engine:
    if profile.engine.kind == "mock":
        if partition.velocities is None:
            raise SettingsError(f"partition {partition.name} has no velocities: the mock engine "
                                "times itself by them")
        return MockEngine(worker_id=settings.worker_id, role=settings.role,
                          velocities=partition.velocities,
                          prefill_cap_tokens=profile.engine.convertible_prefill_cap_tokens,
                          max_batched_tokens=profile.engine.max_num_batched_tokens
                          or DEFAULT_MAX_BATCHED_TOKENS, fail_after_s=settings.mock_fail_after_s)
    from tsslurm.launcher.engines.vllm import VllmEngine

    return VllmEngine(profile, state_dir)

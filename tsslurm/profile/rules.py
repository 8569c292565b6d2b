"""Cross-field rules of a profile: what types alone cannot say. Each rule returns Problems with the
field path and why it matters. Pure: no I/O (template existence is checked by the loader)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise

from tsslurm.profile.schema import PoolBounds, Profile
from tsslurm.profile.validate import Problem
from tsslurm.slurm.duration import parse_slurm_duration


def check_profile(profile: Profile) -> list[Problem]:
    return [problem for rule in RULES for problem in rule(profile)]


def _partitions(profile: Profile) -> Iterator[Problem]:
    if not profile.partitions:
        yield Problem("partitions", "at least one partition is needed: jobs run on one")
    seen: set[str] = set()
    for i, part in enumerate(profile.partitions):
        base = f"partitions[{i}]"
        if part.name in seen:
            yield Problem(f"{base}.name", f"duplicate partition {part.name!r}: pools are per partition")
        seen.add(part.name)
        try:
            parse_slurm_duration(part.time_limit)
        except ValueError as error:
            yield Problem(f"{base}.time_limit", f"{error}; it sets when workers are rotated")
        if part.gpus_per_instance % profile.model.tensor_parallel:
            yield Problem(f"{base}.gpus_per_instance",
                          f"{part.gpus_per_instance} GPUs cannot hold tensor_parallel="
                          f"{profile.model.tensor_parallel} shards evenly")
        if profile.engine.kind == "mock" and part.velocities is None:
            yield Problem(f"{base}.velocities",
                          "the mock engine times prefill and decode from the velocities")


def _velocity_grid(profile: Profile) -> Iterator[Problem]:
    rows = len(profile.buckets.input_edges) + 1
    cols = len(profile.buckets.output_edges) + 1
    for i, part in enumerate(profile.partitions):
        if part.velocities is None:
            continue
        grid = part.velocities.decode_tokens_per_s
        path = f"partitions[{i}].velocities.decode_tokens_per_s"
        if len(grid) != rows or any(len(row) != cols for row in grid):
            yield Problem(path, f"expected a {rows}x{cols} grid (input buckets x output buckets, "
                                "from buckets.*_edges): V_D is looked up per bucket")
        elif any(value <= 0 for row in grid for value in row):
            yield Problem(path, "every V_D must be > 0: it divides the token rate of its bucket")


def _buckets_and_slo(profile: Profile) -> Iterator[Problem]:
    for name in ("input_edges", "output_edges"):
        edges = getattr(profile.buckets, name)
        if any(b <= a for a, b in pairwise(edges)) or any(e <= 0 for e in edges):
            yield Problem(f"buckets.{name}", "edges must be positive and increasing")
    tiers = profile.slo.ttft_tiers
    if not tiers:
        yield Problem("slo.ttft_tiers", "at least one TTFT tier is needed")
    limits = [t.max_input_tokens for t in tiers]
    if any(b <= a for a, b in pairwise(limits)):
        yield Problem("slo.ttft_tiers", "max_input_tokens must increase from tier to tier")


def _pools(profile: Profile) -> Iterator[Problem]:
    for name in ("prefill", "decode", "convertible"):
        bounds: PoolBounds = getattr(profile.pools, name)
        if bounds.max < bounds.min:
            yield Problem(f"pools.{name}", f"need min <= max, got min={bounds.min} max={bounds.max}")
    if profile.pools.decode.max + profile.pools.convertible.max == 0:
        yield Problem("pools", "no decoder can ever run: decode.max + convertible.max is 0")
    budget = profile.pools.gpu_budget
    if budget is not None and budget < _min_gpus(profile):
        yield Problem("pools.gpu_budget", f"{budget} GPUs cannot hold the pools' minimums "
                                          f"({_min_gpus(profile)} GPUs)")


def _min_gpus(profile: Profile) -> int:
    smallest = min((p.gpus_per_instance for p in profile.partitions), default=1)
    pools = profile.pools
    return smallest * (pools.prefill.min + pools.decode.min + pools.convertible.min)


def _policy(profile: Profile) -> Iterator[Problem]:
    from tsslurm.policy.registry import validate_policy_config

    for message in validate_policy_config(profile.policy.name, profile.policy.params):
        yield Problem("policy", message)


RULES: list[Callable[[Profile], Iterator[Problem]]] = [
    _partitions, _velocity_grid, _buckets_and_slo, _pools, _policy,
]

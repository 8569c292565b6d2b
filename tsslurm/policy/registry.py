"""Policies by name. A plain dict of name -> PolicySpec; a user's own policy loads from
`module:function` (the function carries a `params_type` attribute, or takes a dict).

A policy is `decide(snapshot, params, state) -> Decision`: `params` is an instance of its
params_type (frozen, with defaults) or a dict, `state` is the `Decision.state` it returned last
time ({} at first). runner.PolicyRunner wraps it with the guards and the reconciler."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import msgspec


class PolicySpec(msgspec.Struct, frozen=True):
    decide: Callable[..., Any]
    params_type: type | None = None
    startup_scale: float = 1.0
    """What the simulator multiplies queue wait and model load by for this policy: 0.0 grants
    BlitzScale its idealised live scaling (near-zero start-up); every other policy pays 1.0."""
    knob: str | None = None
    """The parameter a cost-SLO sweep varies (threshold, percentile, target)."""
    knob_values: tuple[float, ...] = ()
    """The values a sweep tries, default included."""


POLICIES: dict[str, PolicySpec] = {}


def register(name: str, params_type: type | None = None, *, startup_scale: float = 1.0,
             knob: str | None = None,
             knob_values: tuple[float, ...] = ()) -> Callable[[Callable], Callable]:
    def wrap(decide: Callable) -> Callable:
        POLICIES[name] = PolicySpec(decide, params_type, startup_scale, knob, knob_values)
        return decide
    return wrap


def resolve_policy(name: str) -> PolicySpec:
    """A registered policy, or `module:function` imported on demand."""
    _load_builtin()
    if name in POLICIES:
        return POLICIES[name]
    if ":" not in name:
        raise KeyError(f"unknown policy {name!r}; registered: {', '.join(sorted(POLICIES))}, "
                       "or give module:function")
    module_name, _, attr = name.partition(":")
    decide = getattr(importlib.import_module(module_name), attr)
    return PolicySpec(decide, getattr(decide, "params_type", None))


def validate_policy_config(name: str, params: dict[str, Any]) -> list[str]:
    """Problems with a policy name and its params (empty when fine)."""
    try:
        spec = resolve_policy(name)
    except (KeyError, ImportError, AttributeError, ValueError) as error:
        return [f"policy {name!r} cannot be used: {error}"]
    if spec.params_type is None:
        return []
    try:
        msgspec.convert(params, spec.params_type, strict=False)
    except msgspec.ValidationError as error:
        return [f"params of policy {name!r}: {error}"]
    return []


def _load_builtin() -> None:
    """Import the modules whose @register calls fill POLICIES."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


BUILTIN_MODULES: list[str] = ["tsslurm.policy.tokenscale", "tsslurm.policy.baselines"]

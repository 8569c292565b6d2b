"""PolicyRunner: one autoscaling step, the same in the live broker and in the simulator.

    snapshot -> policy.decide -> guards (stale, hold, bounds, budget) -> reconcile -> actions

It owns the memory carried between steps (the policy's `Decision.state` and the hold guard's
queue), so both adapters only build snapshots and apply actions. A policy reference is a name
with optional parameters: `tokenscale`, `aibrix@kv_target=0.5`, `pkg.mod:decide@x=1`.
Pure: no I/O, no clock (the snapshot's `now` is the only time)."""

from __future__ import annotations

from typing import Any

import msgspec

from tsslurm.errors import UserError
from tsslurm.policy.guards import HoldMemory, hold_down, hold_if_stale, within_bounds, within_budget
from tsslurm.policy.reconcile import ROTATION_MARGIN_S, reconcile
from tsslurm.policy.registry import PolicySpec, resolve_policy
from tsslurm.policy.snapshot import ROLES, Action, Decision, Snapshot


class PolicyError(UserError):
    """A policy reference or its parameters cannot be used."""


class Step(msgspec.Struct, frozen=True):
    decision: Decision
    """The guarded decision (targets as reconciled, reasons of the policy and the guards)."""
    actions: list[Action]


class PolicyRunner:
    def __init__(self, name: str, params: dict[str, Any] | None = None,
                 rotation_margin_s: float = ROTATION_MARGIN_S):
        self.name = name
        self.spec = _resolve(name)
        self.params = _convert_params(name, self.spec, params or {})
        self.rotation_margin_s = rotation_margin_s
        self.state: dict[str, Any] = {}
        self._hold: HoldMemory = {}

    @classmethod
    def from_ref(cls, ref: str, params: dict[str, Any] | None = None) -> PolicyRunner:
        """`name@key=value@key=value`; values given here override `params`."""
        name, overrides = parse_policy_ref(ref)
        return cls(name, {**(params or {}), **overrides})

    @property
    def startup_scale(self) -> float:
        return self.spec.startup_scale

    def step(self, snapshot: Snapshot) -> Step:
        decision = self.spec.decide(snapshot, self.params, self.state)
        if not isinstance(decision, Decision):
            raise PolicyError(f"policy {self.name!r} returned {type(decision).__name__}, "
                              "not a Decision")
        self.state = decision.state
        if snapshot.stale:
            return Step(hold_if_stale(snapshot, decision), [])
        decision, self._hold = hold_down(snapshot, decision, self.hold_s(snapshot), self._hold)
        decision = within_budget(snapshot, within_bounds(snapshot, decision))
        return Step(decision, reconcile(snapshot, decision, self.rotation_margin_s))

    def hold_s(self, snapshot: Snapshot) -> dict[str, float]:
        """Scale-down hold per role: the params' `hold_s`, or `hold_factor` x the slowest
        partition's start-up when hold_s is None; 0 for a policy with neither."""
        fixed = _param(self.params, "hold_s", 0.0)
        if fixed is None:
            startup = max((p.startup_s for p in snapshot.partitions), default=0.0)
            fixed = _param(self.params, "hold_factor", 1.0) * startup
        return {role: float(fixed) for role in ROLES}


def parse_policy_ref(ref: str) -> tuple[str, dict[str, str]]:
    name, *pairs = ref.strip().split("@")
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolicyError(f"policy {ref!r}: expected name@key=value, got {pair!r}")
        params[key.strip()] = value.strip()
    if not name:
        raise PolicyError(f"policy {ref!r}: no policy name")
    return name, params


def _resolve(name: str) -> PolicySpec:
    try:
        return resolve_policy(name)
    except (KeyError, ImportError, AttributeError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise PolicyError(f"policy {name!r} cannot be used: {message}") from None


def _convert_params(name: str, spec: PolicySpec, params: dict[str, Any]) -> Any:
    if spec.params_type is None:
        return dict(params)
    try:
        return msgspec.convert(params, spec.params_type, strict=False)
    except msgspec.ValidationError as error:
        raise PolicyError(f"params of policy {name!r}: {error}") from None


def _param(params: Any, key: str, default: Any) -> Any:
    if isinstance(params, dict):
        return params.get(key, default)
    return getattr(params, key, default)

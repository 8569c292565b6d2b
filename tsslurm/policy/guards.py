"""Guards composed around any policy's decision: each is a small pure function that takes the
snapshot and a decision and returns a decision, so a policy computes only what it wants.

- `hold_if_stale`: a stale Slurm view gives targets equal to what is provisioned (hold still);
- `hold_down`: scale-down stabilisation. A role's total never drops below the largest total asked
  in the last `hold_s` seconds. On Slurm a released instance costs its start-up to get back
  (model load billed, queue wait suffered), so holding an idle one for about that long is the
  ski-rental answer: never more than twice the cost of the best choice made in hindsight;
- `within_bounds`: every role's total within the profile's pool min and max;
- `within_budget`: the GPUs of all targets, plus those still draining, within `gpu_budget`
  (convertibles give way first, then the pool further above its minimum).
Pure: no I/O, no clock (the snapshot's `now` is the only time)."""

from __future__ import annotations

from typing import Any

import msgspec

from tsslurm.policy.reconcile import placement_score, resize
from tsslurm.policy.snapshot import ROLES, Decision, Role, Snapshot

HoldMemory = dict[str, list[list[float]]]
"""role -> [[time, total], ...] with totals strictly decreasing (a monotonic queue)."""


def current_targets(snapshot: Snapshot) -> dict[str, dict[str, int]]:
    return {role: {part: counts.provisioned for part, counts in parts.items()}
            for role, parts in snapshot.pools.items()}


def hold_if_stale(snapshot: Snapshot, decision: Decision) -> Decision:
    if not snapshot.stale:
        return decision
    return _with(decision, current_targets(snapshot), "Slurm view is stale: holding still")


def hold_down(snapshot: Snapshot, decision: Decision, hold_s: dict[str, float],
              memory: HoldMemory) -> tuple[Decision, HoldMemory]:
    """Each role's total is at least its largest asked in the last hold_s[role] seconds."""
    targets = dict(decision.targets)
    reasons: list[str] = []
    memory = {role: [list(p) for p in points] for role, points in memory.items()}
    for role, parts in decision.targets.items():
        asked = sum(parts.values())
        held = _hold_max(memory.setdefault(role, []), snapshot.now, asked, hold_s.get(role, 0.0))
        if held > asked:
            targets[role] = resize(snapshot, _role(role), parts, held)
            reasons.append(f"{role}: holding {held} (asked {asked}) for {hold_s.get(role, 0.0):.0f} s")
    return _with(decision, targets, *reasons), memory


def _hold_max(points: list[list[float]], now: float, asked: int, hold_s: float) -> int:
    while points and points[-1][1] <= asked:
        points.pop()
    points.append([now, float(asked)])
    while points[0][0] < now - hold_s:
        points.pop(0)
    return int(points[0][1])


def within_bounds(snapshot: Snapshot, decision: Decision) -> Decision:
    targets = dict(decision.targets)
    reasons: list[str] = []
    for role, parts in decision.targets.items():
        bounds = getattr(snapshot.bounds, role)
        asked = sum(parts.values())
        total = min(max(asked, bounds.min), bounds.max)
        if total != asked:
            targets[role] = resize(snapshot, _role(role), parts, total)
            reasons.append(f"{role}: {asked} outside [{bounds.min}, {bounds.max}] -> {total}")
    return _with(decision, targets, *reasons)


def within_budget(snapshot: Snapshot, decision: Decision) -> Decision:
    budget = snapshot.bounds.gpu_budget
    if budget is None:
        return decision
    gpus = {p.name: p.gpus_per_instance for p in snapshot.partitions}
    targets = {role: dict(parts) for role, parts in decision.targets.items()}
    draining = sum(gpus.get(j.partition, 1) for j in snapshot.jobs if j.state == "draining")
    over = draining + _gpus(targets, gpus) - budget
    cut = 0
    while over > 0:
        role = _role_to_cut(snapshot, targets)
        if role is None:
            break
        worst = _worst_holding(snapshot, role, targets[role])
        targets[role][worst] -= 1
        over -= gpus[worst]
        cut += 1
    if not cut:
        return decision
    return _with(decision, targets, f"GPU budget {budget}: {cut} instance(s) fewer")


def _gpus(targets: dict[str, dict[str, int]], gpus: dict[str, int]) -> int:
    return sum(n * gpus.get(part, 1) for parts in targets.values() for part, n in parts.items())


def _role_to_cut(snapshot: Snapshot, targets: dict[str, dict[str, int]]) -> Role | None:
    spare = {role: sum(targets.get(role, {}).values()) - getattr(snapshot.bounds, role).min
             for role in ROLES}
    if spare["convertible"] > 0 and "convertible" in targets:
        return "convertible"
    candidates = [r for r in ("decode", "prefill") if spare[r] > 0 and r in targets]
    return max(candidates, key=lambda r: spare[r]) if candidates else None


def _worst_holding(snapshot: Snapshot, role: Role, parts: dict[str, int]) -> str:
    holding = [p for p in snapshot.partitions if parts.get(p.name, 0) > 0]
    return min(holding, key=lambda p: (p.available, placement_score(p, role))).name


def _role(name: str) -> Role:
    if name not in ROLES:
        raise ValueError(f"decision names unknown role {name!r}; roles: {', '.join(ROLES)}")
    return name  # type: ignore[return-value]


def _with(decision: Decision, targets: dict[str, Any], *reasons: str) -> Decision:
    return msgspec.structs.replace(decision, targets=targets,
                                   reasons=[*decision.reasons, *reasons])

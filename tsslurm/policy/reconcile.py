"""From a decision to Slurm actions, and where new capacity goes.

`reconcile(snapshot, decision)` compares each (role, partition) target with the jobs there:
- pending and starting jobs count as capacity, so nothing is submitted twice;
- too few: submit the difference (never on an unavailable partition);
- too many: cancel pending jobs first (nothing to drain, newest first), then starting ones
  (their model load is already paid, but they serve nobody yet, so ready capacity is kept),
  then drain ready ones, nearest its time limit first (that one would need replacing soonest);
- rotation: a job whose time limit ends within its partition's start-up time + a margin no longer
  counts, so a replacement is submitted; the old job is drained once enough others are ready.
A role or partition the decision does not name is left as it is. A stale snapshot gives nothing.

`place(snapshot, role, total)` spreads a role's total over partitions: it keeps capacity where it
is, adds on the partition with the most velocity per billed GPU discounted by its queue wait
(HeteroScale's heterogeneous pools), and removes from the worst first. Pure: no I/O, no clock."""

from __future__ import annotations

from tsslurm.policy.snapshot import (
    ROLES,
    Action,
    Cancel,
    Decision,
    Drain,
    JobView,
    PartitionView,
    Role,
    Snapshot,
    Submit,
)

ROTATION_MARGIN_S = 120.0
USEFUL_HOLD_S = 900.0
"""How long new capacity is expected to serve: weighs its model load and queue wait in `place`."""


def reconcile(snapshot: Snapshot, decision: Decision,
              rotation_margin_s: float = ROTATION_MARGIN_S) -> list[Action]:
    if snapshot.stale:
        return []
    actions: list[Action] = []
    for role in ROLES:
        wanted = decision.targets.get(role)
        if wanted is None:
            continue
        for part in snapshot.partitions:
            if part.name not in wanted:
                continue
            jobs = [j for j in snapshot.jobs if j.role == role and j.partition == part.name]
            actions += _reconcile_pool(snapshot.now, part, role, wanted[part.name], jobs,
                                       rotation_margin_s)
    return actions


def rotation_horizon_s(part: PartitionView, margin_s: float = ROTATION_MARGIN_S) -> float:
    """A job this close to its time limit is replaced (at most half the limit, so a short
    limit cannot make every new job look expiring)."""
    return min(part.startup_s + margin_s, part.time_limit_s / 2)


def expiring(job: JobView, now: float, horizon_s: float) -> bool:
    return (job.state in ("ready", "starting") and job.ends_at is not None
            and job.ends_at - now < horizon_s)


def _reconcile_pool(now: float, part: PartitionView, role: Role, target: int,
                    jobs: list[JobView], margin_s: float) -> list[Action]:
    horizon = rotation_horizon_s(part, margin_s)
    old = sorted((j for j in jobs if expiring(j, now, horizon)), key=_ends_at)
    live = [j for j in jobs if j.state != "draining" and not expiring(j, now, horizon)]
    actions: list[Action] = []
    if target > len(live) and part.available:
        actions.append(Submit(role, part.name, target - len(live),
                              f"{role} on {part.name}: {len(live)} -> {target}"))
    victims = _victims(live, len(live) - target) if target < len(live) else []
    actions += [_remove(j, f"{role} on {part.name}: {len(live)} -> {target}") for j in victims]
    ready_left = sum(1 for j in live if j.state == "ready" and j not in victims)
    actions += _rotate(old, ready_left, target)
    return actions


def _victims(live: list[JobView], excess: int) -> list[JobView]:
    pending = sorted((j for j in live if j.state == "pending"), key=lambda j: -j.submitted_at)
    starting = sorted((j for j in live if j.state == "starting"),
                      key=lambda j: -(j.started_at or 0.0))
    ready = sorted((j for j in live if j.state == "ready"), key=_ends_at)
    return (pending + starting + ready)[:excess]


def _remove(job: JobView, reason: str) -> Action:
    return Drain(job.job_id, reason) if job.state == "ready" else Cancel(job.job_id, reason)


def _rotate(old: list[JobView], ready_left: int, target: int) -> list[Action]:
    """Drain jobs near their time limit once the others cover the target without them."""
    ready_old = [j for j in old if j.state == "ready"]
    ready_total = ready_left + len(ready_old)
    actions: list[Action] = []
    for job in ready_old:
        if ready_total - 1 < target:
            break
        actions.append(Drain(job.job_id, f"time limit at {job.ends_at:.0f}: replaced"))
        ready_total -= 1
    actions += [Cancel(j.job_id, "time limit before it could serve") for j in old
                if j.state == "starting"]
    return actions


def _ends_at(job: JobView) -> float:
    return job.ends_at if job.ends_at is not None else float("inf")


# ---- placement --------------------------------------------------------------------------------

def role_velocity(part: PartitionView, role: Role) -> float:
    """Tokens/s one instance of `role` sustains on `part` (decode: the V_D grid's mean)."""
    v = part.velocities
    if role == "prefill":
        return min(v.prefill_tokens_per_s, v.kv_transfer_tokens_per_s)
    grid = v.decode_tokens_per_s
    return sum(map(sum, grid)) / sum(map(len, grid))


def placement_score(part: PartitionView, role: Role) -> float:
    """Velocity per billed GPU-second over a useful hold, discounted by the queue wait."""
    hold = USEFUL_HOLD_S
    per_gpu = role_velocity(part, role) / part.gpus_per_instance
    return per_gpu * hold / (part.model_load_s + hold) * hold / (part.queue_wait_s + hold)


def place(snapshot: Snapshot, role: Role, total: int) -> dict[str, int]:
    """Targets per partition for `total` instances of `role`, moving as little as possible."""
    kept: dict[str, int] = {}
    for part in snapshot.partitions:
        counts = snapshot.pools.get(role, {}).get(part.name)
        if counts is None:
            kept[part.name] = 0
        else:
            kept[part.name] = counts.provisioned if part.available else counts.ready + counts.starting
    return resize(snapshot, role, kept, total)


def resize(snapshot: Snapshot, role: Role, targets: dict[str, int], total: int) -> dict[str, int]:
    """`targets` changed to sum to `total`: add on the best available partition, remove from
    the worst (unavailable ones first)."""
    result = dict(targets)
    ranked = sorted(snapshot.partitions,
                    key=lambda p: (p.available, placement_score(p, role)), reverse=True)
    change = total - sum(result.values())
    if change > 0:
        best = next((p for p in ranked if p.available), None)
        if best is not None:
            result[best.name] = result.get(best.name, 0) + change
    for part in reversed(ranked):
        if change >= 0:
            break
        take = min(-change, result.get(part.name, 0))
        result[part.name] = result.get(part.name, 0) - take
        change += take
    return result


def role_totals(decision: Decision) -> dict[str, int]:
    return {role: sum(parts.values()) for role, parts in decision.targets.items()}


def placed(snapshot: Snapshot, totals: dict[Role, int]) -> dict[str, dict[str, int]]:
    """Per-partition targets for per-role totals (a Decision's `targets`)."""
    return {role: place(snapshot, role, total) for role, total in totals.items()}


def reference_partition(snapshot: Snapshot, role: Role) -> PartitionView:
    """The partition new `role` capacity goes to (velocities a policy sizes with)."""
    usable = [p for p in snapshot.partitions if p.available] or snapshot.partitions
    return max(usable, key=lambda p: placement_score(p, role))

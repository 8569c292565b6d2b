"""What Slurm's words mean for the autoscaler: a pending reason that is a wait (Priority,
Resources, a hold) or one that says the job will not start (a QOS maximum, an invalid account,
nodes that are not available, a partition that refuses it), and which node states can run jobs.
Unknown reasons count as waits: observations degrade, they do not cancel. Pure: no I/O."""

from __future__ import annotations

from tsslurm.slurm.parse import NodeInfo

WILL_NOT_START = (
    "QOSMax", "ReqNodeNotAvail", "InvalidAccount", "InvalidQOS", "PartitionConfig",
    "PartitionDown", "PartitionInactive", "PartitionNodeLimit", "PartitionTimeLimit",
    "AccountNotAllowed", "QOSNotAllowed", "BadConstraints", "DependencyNeverSatisfied",
    "AssocMax", "InvalidNodeCount", "FrontEndDown", "NodeDown",
    "Invalid account", "Invalid qos", "invalid partition", "Invalid partition",
    "Requested node configuration is not available", "not available", "access denied",
    "AccessDenied",
)
"""Reasons (and sbatch refusals) that mean the job will not start without someone's change."""
NODES_UNAVAILABLE = "Nodes_required_for_job_are_DOWN"
"""Also said when the nodes are only reserved for a higher-priority partition: a wait, unless
every node of the partition is down or drained."""
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})


def will_not_start(reason: str, partition_nodes_down: bool = False) -> bool:
    """True when a job pending (or refused) for `reason` would not start on its own."""
    if not reason:
        return False
    if reason.startswith(NODES_UNAVAILABLE):
        return partition_nodes_down
    return any(word in reason for word in WILL_NOT_START)


def node_usable(node: NodeInfo) -> bool:
    """A node that answers and is idle, mixed or allocated (not down, drained or draining)."""
    return node.responding and node.state in USABLE_NODE_STATES

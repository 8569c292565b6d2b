"""The broker: the long-running head-node process that owns sockets, workers, requests, and (with
the autoscaler) the deployment's Slurm jobs."""

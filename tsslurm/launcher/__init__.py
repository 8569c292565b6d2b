"""The worker side: runs inside a Slurm job (or a local process), starts an engine, connects to the
broker, serves WorkItems. Entry point: `python -m tsslurm.launcher`."""

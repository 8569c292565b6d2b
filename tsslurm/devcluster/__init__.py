"""The private single-host Slurm cluster for development and CI (`tsslurm dev-cluster`).

layout.py (where everything lives, pure), config.py (the config files, pure), host.py (may we
run here; apt), processes.py (pid files, start and stop), services.py (each daemon), cluster.py
(up, down, status). Nothing here touches /etc/slurm or a daemon it did not start."""

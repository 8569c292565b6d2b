"""Everything tsslurm knows about Slurm: time formats (duration.py), output parsers (parse.py),
sbatch rendering (render.py) and the adapter that runs Slurm's commands (adapter.py, the only
place that does). Import the submodule you need; this package imports nothing."""

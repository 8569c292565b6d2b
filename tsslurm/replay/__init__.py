"""`tsslurm replay`: a request trace sent through the real client to a live deployment at its
recorded times, measured and reported in the JSON shape of `tsslurm simulate`.

`schedule.py` (the trace, its send times and prompts; pure), `metrics.py` (outcomes, GPU time from
the broker's job records, the report; pure), `driver.py` (the asyncio sender), `command.py` (the
command: find the deployment, run, write the JSON)."""

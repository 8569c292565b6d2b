"""The offline profiler behind `tsslurm profile`: what one (model, partition) does, measured on
that partition's hardware by a submitit job, and written into the profile.

  results.py     the job's request and typed raw measurements (pure)
  plan.py        what to measure: lengths, batches, levels, repeats; the V_D batch search (pure)
  probes.py      timed requests through the engine interface (prefill, lockstep decode, KV pulls)
  job.py         the function the job runs: two engines, the plan, Measurements or JobFailure
  fit.py         lockstep step times, step-model regression, line fits, saturation rule (pure)
  kvsize.py      KV bytes per token from a model configuration (pure)
  analysis.py    measurements -> Velocities, comparisons and provenance (pure)
  queue_wait.py  queue wait fitted from Slurm's accounting, through the adapter
  contention.py  how much other work held the measured engine back (Linux schedstat)
  yaml_edit.py   measured fields written into a profile's YAML text, comments kept (pure)
  submit.py      submitit executors (Slurm or local), waiting, job errors
  command.py     the `tsslurm profile` command's library function

Nothing here imports vLLM at module level; the job imports it when its engines start."""

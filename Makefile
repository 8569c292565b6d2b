# The two commands of the README: `make run` serves the tiny model on this machine (tsslurm up,
# local backend, embedded default profile); `make test` runs the whole test suite against a real
# local Slurm cluster and real vLLM engines. Both create .venv first.
.PHONY: run test venv cluster-down emulation

venv:
	scripts/install.sh

run: venv
	.venv/bin/tsslurm up --demo

test: venv
	.venv/bin/tsslurm dev-cluster up
	.venv/bin/pytest $(PYTEST_ARGS)

cluster-down:
	.venv/bin/tsslurm dev-cluster down

emulation: venv
	.venv/bin/python benchmarks/emulation.py

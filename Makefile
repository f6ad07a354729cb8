# Two entry points, each doing its own set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   runs the workflow end to end on the genomes bundled with pyrodigal, then writes its report
#   make test   runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup system-deps slurm-deps demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned: 2.13.0 is the CPU build available locally; any other spec pulls CUDA wheels.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[workflow,slurm,ml,dev]"
	touch $@

setup: $(VENV)/.installed system-deps

# MMseqs2 comes from Debian's package (version recorded in every families output).
system-deps:
	@command -v mmseqs >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mmseqs2 >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq mmseqs2 >/dev/null; fi; }

# Debian's SLURM daemons and client for the one-node test cluster of tests/test_slurm.py, which needs root
# and skips without them; .ci/run installs them. Their services stay stopped: the test runs its own.
slurm-deps:
	@dpkg -s slurmctld slurmd slurm-client munge >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		slurmctld slurmd slurm-client munge >/dev/null; }

demo: setup
	$(BIN)/python -m bacflow.demo demo/samples.tsv
	$(BIN)/snakemake all --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --report demo/report.html --configfile config/demo.yaml

# One pytest worker per core (pytest-xdist), each taking whole test files, so that a file's fixtures are made once;
# most tests wait on processes (Snakemake and its jobs, the reference oracles) more than they compute.
test: setup
	$(BIN)/python -m pytest -ra -n auto --dist loadfile

# Zero findings, checked by CI before the tests: ruff (rules and format, see pyproject.toml), snakefmt, and
# Snakemake's own linter on the demo's plan.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/python -m bacflow.demo demo/samples.tsv
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean:
	rm -rf demo .snakemake

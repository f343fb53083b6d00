# Two entry points, both self-contained on a fresh machine (Python 3.11, pip, network to PyPI):
#   make run    set up .venv, then run the main job on the shipped default profile
#   make test   set up .venv, then run the test suite (what CI runs)
#   make demo   the small digits CNN profile (minutes)
PYTHON ?= python3
VENV := .venv
PROFILE ?= profiles/minilm-cpu-int8.toml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test,ray]"   # Ray: the ray executor is tested on a local Ray
	touch $@

.PHONY: setup run demo test test-all bench
setup: $(VENV)/.installed

# A finished run is not redone: `make run` again resumes (and skips) what is on disk.
run: setup
	$(VENV)/bin/spdy run $(PROFILE) $(if $(wildcard runs/$(basename $(notdir $(PROFILE)))/events.jsonl),--resume)

demo:
	$(MAKE) run PROFILE=profiles/digits-cpu.toml

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

bench: setup
	$(VENV)/bin/python benchmarks/bench_dp.py

# Two entry points, both self-contained on a fresh machine (Python 3.11, pip, network to PyPI):
#   make run    set up .venv, then run the main job on the shipped default profile
#   make test   set up .venv, then run the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PROFILE ?= profiles/minilm-cpu.toml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

.PHONY: setup run test test-all bench
setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/spdy check $(PROFILE)
	$(VENV)/bin/spdy solve --timings tests/data/spdy_timings/rn50_unstr.txt --target 2 --skip conv1 --skip fc

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

bench: setup
	$(VENV)/bin/python benchmarks/bench_dp.py

# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
SHELL := /bin/bash
# Robots run ROS 2 Humble on Python 3.10: use it when this machine has it, else python3.
PYTHON ?= $(shell for p in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 python3; do \
            if $$p -c 'import sys' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
JAZZY_VENV := .venv-jazzy
PIP_QUIET := --quiet --disable-pip-version-check
DEPS := setup.py pyproject.toml requirements-dev.txt

.PHONY: demo test lint typecheck unit test-jazzy venv venv-jazzy clean bench soak

$(VENV)/.installed: $(DEPS) requirements-ros-kilted.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[aggregator,test,uvloop]' -r requirements-dev.txt -r requirements-ros-kilted.txt
	@touch $@

$(JAZZY_VENV)/.installed: $(DEPS) requirements-ros-jazzy.txt
	$(PYTHON) -m venv $(JAZZY_VENV)
	$(JAZZY_VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(JAZZY_VENV)/bin/pip install $(PIP_QUIET) -e '.[aggregator,test,uvloop]' -r requirements-dev.txt -r requirements-ros-jazzy.txt
	@touch $@

venv: $(VENV)/.installed
venv-jazzy: $(JAZZY_VENV)/.installed

demo: venv
	$(VENV)/bin/python -m tvm_observability.demo $(if $(VEHICLES),--vehicles $(VEHICLES)) $(if $(DURATION),--duration $(DURATION)) $(if $(OUTAGE_S),--outage-s $(OUTAGE_S))

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Every test against the ROS 2 Kilted wheels, then the ROS tests again against Jazzy.
unit: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-jazzy: venv-jazzy
	$(JAZZY_VENV)/bin/pytest -m ros $(PYTEST_ARGS)

test: lint typecheck unit test-jazzy

# Benchmarks (docs/benchmarks.md) and the long load run (docs/reliability.md, "Load and soak"). Both pin the server under test
# to core 0 and the load to core 1; both take minutes. BENCH_ARGS / SOAK_ARGS pass options (see --help).
$(VENV)/.bench-installed: $(VENV)/.installed setup.py
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[aggregator,uvloop]'
	@touch $@

bench: $(VENV)/.bench-installed
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

soak: $(VENV)/.bench-installed
	$(VENV)/bin/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(JAZZY_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts

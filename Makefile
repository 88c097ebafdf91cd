# The two commands a newcomer runs: `make demo` and `make test`.
# Everything else here is what they are made of.
SHELL := /bin/bash
PYTHON_BIN ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
WITH_STACK := deploy/local/with-stack.sh

.PHONY: help venv tools deploy-tools deploy-check prometheusrule dashboards lint format unit integration test demo stack-up stack-down stack-status clean

help:
	@echo "make demo        run the worker on a local stack with sample data"
	@echo "make test        lint, type-check, unit and integration tests (starts and stops the stack)"
	@echo "make lint        ruff + mypy"
	@echo "make stack-up    start Kafka + the local Kinesis endpoint (make stack-down stops them)"

# The virtualenv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON_BIN) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "Python 3.11 or newer is needed (found $$($(PYTHON_BIN) --version))"; exit 1; }
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

# Prometheus + promtool from Debian's package, unpacked under ~/.cache (once); tests use promtool.
tools:
	bash deploy/local/prometheus.sh install

# kustomize, compose-go's checker and the CRDs for tests/deploy, built or fetched
# from the Go module proxy under ~/.cache (once). Needs Go.
deploy-tools:
	bash deploy/tools/install.sh install

# Only the checks of deploy/ (Dockerfile, compose, Kubernetes, YAML); no stack needed.
deploy-check: venv tools deploy-tools
	$(PY) -m pytest tests/deploy -q -p no:cacheprovider

# Regenerates the Kubernetes PrometheusRule from deploy/prometheus/alerts.yaml.
prometheusrule: venv
	$(PY) deploy/tools/prometheusrule.py

# Regenerates grafana/dashboards/*.json from grafana/generate.py.
dashboards: venv
	$(PY) grafana/generate.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

stack-up: venv
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

unit: venv tools
	$(PY) -m pytest tests/unit -q

# Starts the stack when it is not running and stops it afterwards, also on failure.
integration: venv
	$(WITH_STACK) $(PY) -m pytest tests/integration -q

test: lint tools deploy-tools
	$(WITH_STACK) $(PY) -m pytest tests -q -p no:cacheprovider --durations=15

demo: venv
	$(WITH_STACK) $(PY) -m deploy.local.demo

clean: stack-down
	rm -rf $(VENV) .stack .pytest_cache .mypy_cache .ruff_cache

# wxens — every target sets up what it needs; a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.wxens-installed
JOBS   ?= 2

.PHONY: venv demo test bench docs lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev,notebook,docs]"
	touch $(STAMP)

venv: $(STAMP)

## The main job: build the embedded world (cached) and run the demo workflow on it.
demo: $(STAMP)
	$(VENV)/bin/wxens run workflows/demo.yaml

## The test suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) site .pytest_cache

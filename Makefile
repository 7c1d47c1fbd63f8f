# Quick start: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format clean reproduce

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-env.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-env.txt
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dsmooth demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The CIFAR-10 campaign (results/cifar10/STATUS.md): continue from the committed state on
# this host, committing results/cifar10/ every COMMIT_EVERY minutes (0: never).
COMMIT_EVERY ?= 25
reproduce: $(STAMP)
	$(BIN)/python results/campaign.py run --commit-every $(COMMIT_EVERY)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks results
	$(BIN)/ruff format --check src tests benchmarks results
	$(BIN)/mypy
	cd src && ../$(BIN)/lint-imports ../pyproject.toml

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks results
	$(BIN)/ruff check --fix src tests benchmarks results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

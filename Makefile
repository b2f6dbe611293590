# `make test` and `make demo` build their own venv: torch (CPU wheel) first, then the project
# pinned by constraints.txt so pip never backtracks.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/ruff check hfmerge tests $(wildcard benchmarks/*.py)
	HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check hfmerge tests $(wildcard benchmarks/*.py)

demo: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/hfmerge demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info

# `make test` and `make demo` build their own venv: torch (CPU wheel) first, then the project
# pinned by constraints.txt so pip never backtracks.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean chromium screenshots

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The Space's browser test drives Debian's Chromium through Playwright (never `playwright install`).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

PYTEST := HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q

test: $(STAMP) chromium
	HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_TELEMETRY=1 $(BIN)/ruff check hfmerge tests $(wildcard benchmarks/*.py)
	$(PYTEST) tests

# Refresh the README's screenshots of the deployed Space (the browser test, saving into space/screenshots).
screenshots: $(STAMP) chromium
	HFMERGE_SCREENSHOTS=space/screenshots $(PYTEST) tests/test_space_browser.py

lint: $(STAMP)
	$(BIN)/ruff check hfmerge tests $(wildcard benchmarks/*.py)

demo: $(STAMP)
	HF_HUB_DISABLE_XET=1 $(BIN)/hfmerge demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info

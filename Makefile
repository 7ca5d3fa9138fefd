# salbench: `make demo` runs the main job on the embedded default; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-slow test-all crosscheck benchmark gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs when pyproject.toml changes (the project itself is installed editable).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/salbench -m experiment=demo,demo_samples hydra.sweep.dir=$(DEMO_DIR)
	$(BIN)/salbench report $(DEMO_DIR) --out $(DEMO_DIR)/report

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# The report and inspection pages in headless Chromium (Debian's `chromium`, installed with apt-get when missing).
.PHONY: test-report-browser
test-report-browser: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium) \
		|| (sudo apt-get update && sudo apt-get install -y chromium)
	$(BIN)/python -m pytest -q -m slow tests/test_reports_browser.py tests/test_inspection_browser.py

crosscheck: $(STAMP)
	$(BIN)/salbench crosscheck

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.run

# CUDA tests + ResNet-50 benchmark in a few minutes of GPU time; outputs in $$OUT (or outputs/gpu_check)
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf outputs multirun build dist *.egg-info

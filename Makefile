# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# PyTorch comes first and pinned, so pip takes the local CPU wheel instead of a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/stratalm demo

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

# Every benchmark case side by side with its competitor -> JSON on stdout, bench/RESULTS.md.
# BENCH_FLAGS="--compile" adds torch.compile variants; "--quick" runs fewer repeats.
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) runs

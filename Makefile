# xpcs-io developer commands. Every target bootstraps .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= demo-data
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast system-deps check bench fmt openapi clean soak

SERVE_STAMP := $(VENV)/.installed-server

# Everything: serving, the client, tests and linters.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[client,server,test,dev,progress]'
	touch $(STAMP) $(SERVE_STAMP)

# Only what serving needs, with pip's progress shown (the first run downloads h5py and
# friends); a full install above counts too.
$(SERVE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "Installing xpcs-io and the server's packages into $(VENV)..."
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e '.[server]'
	touch $(SERVE_STAMP)

run: $(SERVE_STAMP)
	test -f $(DATA)/.complete || $(BIN)/xpcs-io demo $(DATA)
	$(BIN)/xpcs-io serve --root $(DATA) --host $(HOST) --port $(PORT)

# System programs the tests drive for real (nginx, docker-compose, chromium), installed with
# apt when missing.
system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# The suite without the reliability suites and the tests marked slow (the image replay, crash
# loops, long property runs), for quick iterations: under 3 minutes on 2 shared cores.
test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m 'not slow' --ignore=tests/reliability

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

openapi: $(STAMP)
	$(BIN)/python scripts/export_openapi.py

# Reliability and security suites at full size (bounded versions run in `make test`);
# figures go to tests/reliability/out/soak/, then RELIABILITY.md is rendered from them.
soak: $(STAMP)
	XPCS_IO_SOAK=1 $(BIN)/python -m pytest tests/reliability -q -p no:cacheprovider; \
	status=$$?; $(BIN)/python tests/reliability/report.py; exit $$status

# Benchmarks run in their own venv: tiled pins versions the main venv does not want.
# BENCH_ARGS=--quick for a smoke run, BENCH_ARGS='--only w1,w2' for chosen workloads.
BENCH_VENV := .venv-bench
BENCH_ARGS ?=
bench:
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[server,client,bench]' \
		'h5grove>=4,<5' 'tiled[server,client]>=0.2,<0.3'
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache

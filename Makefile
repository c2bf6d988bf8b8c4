# Every target installs what it needs into .venv (and apt packages where noted), so each works on a
# fresh machine. CARGO_BUILD_JOBS keeps builds inside the 2-core budget.
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PY := $(BIN)/python
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(BIN):$(PATH)
DATA_DIR ?= phoenix-data
DIST ?= dist

.PHONY: deps develop run test test-rust test-rules test-python lint fmt wheel bench clean bench-http bench-soak bench-instructions

$(VENV)/.deps: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q --group dev
	touch $@

deps: $(VENV)/.deps

# Release build: the service is only as fast as its core.
develop: deps
	maturin develop --release -q

run: develop
	phoenix serve --data-dir $(DATA_DIR)

test: test-rust test-rules test-python

test-rust:
	cargo test -q

# The alert rules of deploy/prometheus/, checked and unit-tested by promtool (Debian's prometheus
# package, installed with apt-get when promtool is missing).
test-rules:
	command -v promtool >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends prometheus; }
	promtool check rules deploy/prometheus/phoenix-alerts.yml
	promtool test rules deploy/prometheus/phoenix-alerts.test.yml

# End-to-end tests install the Debian packages they run (curl, wrk, prometheus, chromium, postgresql,
# redis-server...) with apt-get when missing, as root (CI); see tests/debian.py and tests/servers.py.
test-python: develop
	pytest -q

# stubtest checks _core.pyi against the built extension, so lint builds it first.
lint: develop
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	cargo clippy -q --features python -- -D warnings
	ruff check python tests benches
	ruff format --check python tests benches
	mypy
	python -m mypy.stubtest phoenix._core --allowlist tests/stubtest-allowlist.txt

fmt: deps
	cargo fmt
	ruff format python tests benches
	ruff check --fix python tests benches

# The abi3 wheel for CPython >= 3.10 on Linux x86_64 with glibc >= 2.17 (manylinux2014): zig (the ziglang
# package of the dev group) links it against glibc 2.17 whatever this machine's glibc, and maturin refuses to
# tag a wheel that needs more. Plus the sdist, for every other platform (built with a Rust toolchain).
wheel: deps
	maturin build --release --zig --compatibility manylinux2014 -o $(DIST)
	maturin sdist -o $(DIST)

# Micro-benchmarks, Phoenix beside pure Python per group, with the ratios printed after the table. Each run
# is saved under .benchmarks/ (git-ignored): make bench BENCH_OPTS=--benchmark-compare sets each result beside
# the previous run's (or =0001 for run 1).
bench: develop
	pytest benches --benchmark-enable --benchmark-group-by=group --benchmark-autosave \
		--benchmark-columns=min,median,mean,ops,rounds -q $(BENCH_OPTS)

clean:
	rm -rf target dist $(VENV) .pytest_cache .mypy_cache .ruff_cache

# HTTP benchmark: Phoenix /health and /ready, main port and probe listener, vs a bare Granian ceiling,
# FastAPI + uvicorn and nginx (nginx-light), over HTTP/1.1 (wrk) and h2c (h2load; nginx and h2load
# installed with apt-get when missing); pinned cores; sequential rounds, then head-to-head rounds against
# each reference. Groups: --only main,probe,h2 (default all).
# e.g. make bench-http BENCH_ARGS="--duration 3 --rounds 1 --h2h-rounds 2 --connections 50 --only probe"
bench-http: develop
	python benches/http_harness.py $(BENCH_ARGS)

# Soak: Phoenix under 50 keep-alive connections on /health and /ready (wrk, pinned cores) for MINUTES
# minutes after a 30 s warm-up; reports the worker's RSS growth. e.g. make bench-soak MINUTES=5
MINUTES ?= 5
bench-soak: develop
	python benches/soak.py --minutes $(MINUTES)

# Instructions per request under callgrind (valgrind, installed if missing): Phoenix beside the ceiling.
# e.g. make bench-instructions BENCH_ARGS="--seconds 5 --profiles /tmp/profiles"
bench-instructions: develop
	python benches/instructions.py $(BENCH_ARGS)

# The README's picture of the status page, benches/results/status-page.png: the default kernel plus a
# warning and a failing subsystem, taken by headless chromium (installed with apt-get when missing).
.PHONY: screenshot
screenshot: develop
	python benches/status_screenshot.py

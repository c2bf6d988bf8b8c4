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

.PHONY: deps develop develop-pgo pgo-profile run test test-rust test-rules test-python lint fmt wheel bench clean bench-http bench-soak bench-instructions

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
# tag a wheel that needs more. Profile-guided (see pgo-profile) unless PGO=0. Plus the sdist, for every other
# platform (built with a Rust toolchain, without a profile).
WHEEL_BUILD := maturin build --release --zig --compatibility manylinux2014
PGO ?= 1
wheel: deps $(if $(filter 1,$(PGO)),pgo-profile)
	$(if $(filter 1,$(PGO)),$(PGO_USE)) $(WHEEL_BUILD) -o $(DIST)
	maturin sdist -o $(DIST)

# Profile-guided optimisation (PGO): the wheel is built once instrumented (-Cprofile-generate) and installed
# into a venv of its own, which benches/pgo_train.py trains (phoenix serve loaded as `make bench-http` loads
# it, the probe port's /health most); then built again, dependencies included, with the merged profile
# (-Cprofile-use). LLVM finds a function's counts by a name that carries the crate's build options, so both
# builds are zig's; the instrumented one is linked by the system's linker (zig takes rustc's
# `-u __llvm_profile_runtime` for a file), so its glibc is this machine's and it is not audited. Each
# training starts from an empty raw/ and its profile is named by its hash, so that cargo rebuilds whenever
# it changes. llvm-profdata must read what rustc's LLVM writes: Debian's llvm-N for rustc's LLVM major N
# (installed with apt-get when missing).
PGO_DIR := $(CURDIR)/target/pgo
LLVM_MAJOR = $(shell rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
LLVM_PROFDATA = /usr/lib/llvm-$(LLVM_MAJOR)/bin/llvm-profdata
# PGO_RUSTFLAGS: more flags for the optimised build (tests/test_wheel.py asks LLVM to warn of any
# function the profile lacks); PGO_TRAIN_ARGS: pgo_train.py's (the test's training is shorter).
PGO_USE = CARGO_TARGET_DIR=$(PGO_DIR)/optimised \
	RUSTFLAGS="-Cprofile-use=$(wildcard $(PGO_DIR)/phoenix-*.profdata) $(PGO_RUSTFLAGS)"

pgo-profile: deps
	test -x $(LLVM_PROFDATA) || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends llvm-$(LLVM_MAJOR); }
	rm -rf $(PGO_DIR)/instrumented-wheel $(PGO_DIR)/*.profdata
	CARGO_TARGET_DIR=$(PGO_DIR)/instrumented RUSTFLAGS="-Cprofile-generate=$(PGO_DIR)/raw -Clinker=cc" \
		$(WHEEL_BUILD) --auditwheel skip -q -o $(PGO_DIR)/instrumented-wheel
	rm -rf $(PGO_DIR)/raw
	test -x $(PGO_DIR)/venv/bin/python || python3 -m venv $(PGO_DIR)/venv
	$(PGO_DIR)/venv/bin/python -m pip install -q --force-reinstall --no-deps $(PGO_DIR)/instrumented-wheel/*.whl
	$(PGO_DIR)/venv/bin/python -m pip install -q $(PGO_DIR)/instrumented-wheel/*.whl
	python benches/pgo_train.py --phoenix $(PGO_DIR)/venv/bin/phoenix --profiles $(PGO_DIR)/raw $(PGO_TRAIN_ARGS)
	$(LLVM_PROFDATA) merge -o $(PGO_DIR)/merged.profdata $(PGO_DIR)/raw
	mv $(PGO_DIR)/merged.profdata $(PGO_DIR)/phoenix-$$(sha256sum $(PGO_DIR)/merged.profdata | cut -c1-16).profdata

# The wheel `make wheel` ships, installed into .venv: what the benchmarks measure. `make develop` undoes it.
develop-pgo: deps
	rm -rf $(PGO_DIR)/dist
	$(MAKE) wheel PGO=1 DIST=$(PGO_DIR)/dist
	pip install -q --force-reinstall --no-deps $(PGO_DIR)/dist/*.whl

# Micro-benchmarks, Phoenix beside pure Python per group, with the ratios printed after the table. Each run
# is saved under .benchmarks/ (git-ignored): make bench BENCH_OPTS=--benchmark-compare sets each result beside
# the previous run's (or =0001 for run 1).
bench: develop-pgo
	pytest benches --benchmark-enable --benchmark-group-by=group --benchmark-autosave \
		--benchmark-columns=min,median,mean,ops,rounds -q $(BENCH_OPTS)

clean:
	rm -rf target dist $(VENV) .pytest_cache .mypy_cache .ruff_cache

# HTTP benchmark: Phoenix /health and /ready, main port and probe listener, vs a bare Granian ceiling,
# FastAPI + uvicorn and nginx (nginx-light), over HTTP/1.1 (wrk) and h2c (h2load; nginx and h2load
# installed with apt-get when missing); pinned cores; sequential rounds, then head-to-head rounds against
# each reference. Groups: --only main,probe,h2 (default all).
# e.g. make bench-http BENCH_ARGS="--duration 3 --rounds 1 --h2h-rounds 2 --connections 50 --only probe"
bench-http: develop-pgo
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

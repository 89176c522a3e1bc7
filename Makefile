# semcache: `make run` (installs, then starts the sidecar), `make test` (installs, then tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE := 1

.PHONY: install build run demo test test-native test-python lint bench bench-quality bench-proxy bench-embedding bench-micro bench-scale clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# the CPU build of torch first: left to choose, pip would pull a multi-GB CUDA build
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q "Cython>=3.0" "numpy>=1.26"
	$(PIP) install -q --no-build-isolation -e ".[test,dev]"
	touch $@

install: $(VENV)/.installed build

# rebuild the native modules in place (after editing ext/*.pyx)
build: $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace

# the main job: the sidecar on 127.0.0.1:8080 in front of the bundled fake upstream
run: install
	$(PY) -m semcache quickstart

# the cache as a library, without HTTP
demo: install
	$(PY) -m semcache demo

test: install test-native test-python

test-native:
	SEMCACHE_REQUIRE_EXTENSIONS=1 $(PY) -m pytest -q

test-python:
	SEMCACHE_NO_EXTENSIONS=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check semcache tests bench
	$(VENV)/bin/mypy semcache

bench: install
	$(PY) -m bench

# static threshold vs the adaptive policy (warm-up on dev in shadow mode, scored on test)
bench-quality: install
	$(PY) -m semcache bench quality --readme README.md

# the sidecar's latency and throughput against the fake upstream (~3 minutes)
bench-proxy: install
	$(PY) -m bench.bench_proxy --n 200

# embedding backends side by side: forward time, batcher latency and throughput (~3 minutes)
bench-embedding: install
	$(PY) -m bench.bench_embedding

# native vs twin, side by side (pytest-benchmark)
bench-micro: install
	$(PY) -m pytest bench/bench_micro.py -q -p no:cacheprovider --benchmark-columns=median,ops --benchmark-group-by=group

# the index at 10k / 100k / 1M entries (the 1M run takes ~6 minutes and ~6 GB)
bench-scale: install
	$(PY) -m bench.bench_index 10000 100000 1000000

clean:
	rm -rf build semcache/*.so ext/*.c .pytest_cache .mypy_cache .ruff_cache

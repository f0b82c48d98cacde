# The two set-up commands of the README: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock files (README, "Development"): every package pinned with its hashes, so a fresh
# clone installs exactly what CI tested. dev.txt holds runtime.txt's pins, the dev extra and
# the build backend; the project itself is then installed without dependencies.
LOCKS := requirements/runtime.txt requirements/build.txt requirements/dev.txt
UV_VERSION := 0.13.9
LOCK = uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: dev test install lock bench clean

$(STAMP): pyproject.toml $(LOCKS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/osma-router dev

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-resolve the locks from pyproject.toml (needs PyPI): keeps the pins that still fit, so
# run it after changing a dependency; `make lock LOCK_ARGS=--upgrade` moves every pin to the
# newest release (or `LOCK_ARGS="--upgrade-package NAME"` for one). uv comes from a
# throwaway virtualenv, at a fixed version so the files' layout does not drift.
lock:
	tool=$$(mktemp -d) && $(PYTHON) -m venv $$tool/venv \
	&& $$tool/venv/bin/pip install --quiet uv==$(UV_VERSION) \
	&& $$tool/venv/bin/$(LOCK) pyproject.toml -o requirements/runtime.txt \
	&& $$tool/venv/bin/$(LOCK) requirements/build.in -o requirements/build.txt \
	&& $$tool/venv/bin/$(LOCK) pyproject.toml requirements/build.in --extra dev \
		-c requirements/runtime.txt -c requirements/build.txt -o requirements/dev.txt; \
	status=$$?; rm -rf $$tool; exit $$status

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

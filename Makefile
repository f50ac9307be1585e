# One task runner, used the same way on a laptop and in CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run test lint typecheck pytest services tools install install-dev bench lock clean

# The runtime install: everything `make run` needs, pinned by requirements.lock.
$(VENV)/.runtime: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# llama-cpp-python builds from source (~7 min on 2 cores, once; pip caches the wheel); portable CPU flags.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -r requirements.lock
	$(PIP) install --no-deps -e .
	touch $@

# Dev tools on top (ruff, mypy, pytest), pinned by requirements-dev.lock.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -r requirements-dev.lock
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: install
	$(BIN)/helpline serve --host 127.0.0.1 --port 8000

services:
	bash scripts/services.sh

# Validators the deploy tests run (promtool, nginx, shellcheck, hadolint, actionlint, docker compose); idempotent.
tools: install-dev
	bash scripts/install-tools.sh $(VENV)
	bash scripts/install-browser.sh $(VENV)

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install-dev
	$(BIN)/mypy --strict src tests bench

# pytest exits 5 when it collects nothing; that is a failure for us (a suite that runs no test proves nothing).
pytest: install-dev services tools
	$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

test: lint typecheck pytest

bench: install-dev
	$(BIN)/python -m bench.retrieval
	$(BIN)/python -m bench.http

lock: install-dev
	$(BIN)/uv pip compile pyproject.toml -q --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml -q --extra dev --python-version 3.11 -o requirements-dev.lock

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

# The two commands: `make run` (set up from uv.lock, then start the whole stack) and `make test` (set up from
# uv.lock, then the tests). `make lock` refreshes the lock; `make test-latest` tries the newest releases.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := .uv/bin/uv
CONFIG ?= config/router.yaml
# More flags for `tiered-router up` (`make run UP_ARGS='--restart-max-delay 60'`; `tiered-router up --help`).
UP_ARGS ?=
# GPU hosts: `make run TORCH_INDEX=https://download.pytorch.org/whl/cu130 CONFIG=config/gpu.yaml` installs the lock
# with the CUDA build of the locked torch version in place of the CPU wheel.
TORCH_INDEX ?=
TORCH_VERSION := 2.13.0
SYNC_FLAGS := --frozen --inexact --quiet $(if $(TORCH_INDEX),--no-install-package torch)
export NEMO_GUARDRAILS_NO_USAGE_STATS := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup setup-test run test lint lock test-latest bench clean

# uv itself comes from the package index through pip, pinned; it lives beside the venv, not in it.
$(UV):
	$(PYTHON) -m pip install -q --disable-pip-version-check --target .uv uv==$(UV_VERSION)

# `uv sync --frozen` installs exactly uv.lock (and fails if pyproject.toml no longer matches it). It takes well
# under a second when nothing changed, so it runs every time.
setup: $(UV)
	$(UV) sync $(SYNC_FLAGS)
	$(if $(TORCH_INDEX),$(MAKE) --no-print-directory $(VENV)/.torch-from-index)

setup-test: $(UV)
	$(UV) sync $(SYNC_FLAGS) --extra test
	$(if $(TORCH_INDEX),$(MAKE) --no-print-directory $(VENV)/.torch-from-index)

$(VENV)/.torch-from-index:
	$(UV) pip install --python $(PY) --reinstall-package torch 'torch==$(TORCH_VERSION)' --index-url $(TORCH_INDEX)
	echo '$(TORCH_INDEX)' > $@

run: setup
	$(VENV)/bin/tiered-router up --config $(CONFIG) $(UP_ARGS)

# The real client libraries' tests (tests/clients: LangChain, LiteLLM, llama-index, pydantic-ai) run in a process of
# their own: importing those libraries changes process-wide state that later model loading in the same process
# trips over ("Cannot copy out of meta tensor"), seen only when they ran first.
test: setup-test
	$(PY) -m pytest -q --ignore=tests/clients $(PYTEST_ARGS)
	$(PY) -m pytest -q tests/clients $(PYTEST_ARGS)

lint: setup-test
	$(VENV)/bin/ruff check router workers tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

lock: $(UV)
	$(UV) lock --upgrade

# The newest release of every dependency (torch excepted: the newest on the index is the multi-GB CUDA build,
# so the CPU wheel stays), resolved into its own venv, ignoring uv.lock. Not part of CI: it tells whether the
# next `make lock` will break anything.
test-latest: $(UV)
	$(UV) venv --quiet --allow-existing .venv-latest
	$(UV) pip install --quiet --python .venv-latest/bin/python --upgrade --resolution highest \
	  --index https://pypi.org/simple --find-links /opt/wheels 'torch==2.13.0+cpu' -e '.[test]'
	$(UV) pip list --python .venv-latest/bin/python 2>/dev/null \
	  | grep -E '^(torch|transformers|bitsandbytes|nemoguardrails|litestar|accelerate|gguf) '
	.venv-latest/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .uv .pytest_cache .mypy_cache .ruff_cache

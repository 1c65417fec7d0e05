# Shortcuts for the commands the README and docs/ describe; run them inside the venv
# (. .venv/bin/activate). PYTHON=... selects another interpreter.
PYTHON ?= python

.PHONY: test test-fast lint bench bench-main docs-check

test:        ## every test (about 4 min on 2 cores)
	$(PYTHON) -m pytest -q

test-fast:   ## the tests without the slow marker
	$(PYTHON) -m pytest -q -m "not slow"

lint:        ## ruff lint and format check (what the pre-commit hook runs)
	ruff check . && ruff format --check .

bench:       ## the CI regression suite against the committed reference (about 17 min)
	$(PYTHON) tools/benchmark.py --suite ci --check benchmarks/ci.json

bench-main:  ## the main synthetic benchmark (docs/benchmark.md)
	$(PYTHON) tools/benchmark.py --suite synthetic

docs-check:  ## layout, import rules, links and outside references (docs/architecture.md)
	$(PYTHON) -m pytest -q tests/test_architecture.py

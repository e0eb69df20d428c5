# The two commands of the README. Each makes .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench coverage chromium clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fieldsync needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fieldsync demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers: most tests wait on sockets, processes or hypothesis, and ports are per test.
# The console's browser tests drive Debian's chromium: installed here as root when missing
# (elsewhere they skip, naming what is missing).
test: lint chromium
	$(BIN)/pytest --durations=25 -n 2 --dist worksteal

chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for tests/test_console.py"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "chromium could not be installed: the console's browser tests will skip"; \
	fi

# The same suite with coverage, the node and fleet processes the tests start included
# ([tool.coverage.run] in pyproject.toml). Not part of `make test`: tracing every process
# took the suite from 1,006 s to 1,378-1,547 s on 2 cores and slowed the restarts that
# scenario timelines wait for.
coverage: $(STAMP) chromium
	$(BIN)/pytest --cov --cov-report=term:skip-covered -n 2 --dist worksteal

bench: $(STAMP)
	$(BIN)/python benchmarks/codec.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

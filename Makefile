# The two commands of the README are `make demo` and `make test`; everything they need is
# installed by the targets below, from PyPI and Maven Central, on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KAFKA_LIB := infra/kafka/lib/.pom.sha256

.PHONY: install browser demo test lint bench up down status clean

install: $(VENV)/.installed $(KAFKA_LIB)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $@

$(KAFKA_LIB): infra/pom.xml $(VENV)/.installed
	$(BIN)/python -m infra install

# Headless Chromium renders the curation report in tests/test_report.py (skipped without it):
# installed from Debian's packages when missing and this runs as root, else left out.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "chromium not installed: the report's browser test will be skipped"

demo: install
	$(BIN)/infogrowth demo

test: install browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --progress-bar off -e '.[dev,bench]'
	touch $@

bench: install $(VENV)/.bench-installed
	$(BIN)/python bench/gain_bench.py
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/quality_bench.py

up: install
	$(BIN)/python -m infra up

down:
	$(BIN)/python -m infra down

status:
	$(BIN)/python -m infra status

clean: down
	rm -rf .data

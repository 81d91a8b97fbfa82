# Set-up commands: `make serve` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean chromium screenshots

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/illustrator serve

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# tests/browser drive Debian's chromium with Playwright (never a downloaded browser):
# installed here when missing and we are root, else the one line to run.
CHROMIUM_INSTALL := apt-get install -y chromium
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for tests/browser: $(CHROMIUM_INSTALL)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(CHROMIUM_INSTALL) -qq; \
	else \
		echo "error: tests/browser need Debian's chromium; run: sudo $(CHROMIUM_INSTALL)"; exit 1; \
	fi

# The README's screenshots of the web page (docs/screenshots/), from a fresh server.
screenshots: $(STAMP) chromium
	$(BIN)/python tools/screenshots.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy actors cli loadtest storage pipeline web config.py domain.py errors.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/session_document.py

clean:
	rm -rf $(VENV) *.egg-info

# Two commands do everything on a fresh machine:
#   make run    install into .venv, then start Redis (if needed), one worker and the API
#   make test   install into .venv, then lint and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench browser redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/atelier up $(ARGS)

lint: install
	$(BIN)/ruff check .

test: lint browser redis-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Headless Chromium and its driver for the web page tests (Debian's packages; nothing else is
# downloaded). Installed with apt-get when missing; without apt-get the browser tests skip and say so.
CHROMIUM_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing $(CHROMIUM_PACKAGES) for the browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM_PACKAGES); \
	else echo "no apt-get: the browser tests will be skipped"; fi

# redis-server itself (Debian's package): the durability tests start their own, with append-only
# persistence on a free port, and restart it. Installed with apt-get when missing.
redis-server:
	@if command -v redis-server >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
		echo "installing redis-server for the durability tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	else echo "no apt-get and no redis-server: the durability tests will fail"; fi

# meshward: `make demo` runs the main job, `make test` passes the tests (both set up everything).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := hping3 nmap dnsutils wrk nghttp2-client tcpdump dnsmasq-base iproute2 iputils-ping openssl util-linux curl postgresql chromium iptables

.PHONY: setup system-deps demo test test-fast lint bench clean dashboard

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-deps kube-apiserver dashboard

# The dashboard's bundle (npm ci when package-lock.json's hash changes, then esbuild): docs/dashboard.md
dashboard:
	@bash scripts/dashboard.sh

# A real kube-apiserver v1.20.2 for tests/kube, built once from Debian's source package (~5 min),
# then cached: a no-op afterwards (docs/kubernetes.md).
.PHONY: kube-apiserver
kube-apiserver:
	@bash scripts/kube-apiserver.sh

# Attack and load tools the integration tests and benchmarks drive, PostgreSQL for the shared
# alerts store's tests and Chromium for the dashboard's (root only; skipped otherwise).
system-deps:
	@missing=""; for t in hping3 nmap dig wrk h2load tcpdump dnsmasq ip ping openssl setpriv curl chromium iptables; do \
	  command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system tools:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else echo "note: missing$$missing (integration tests that need them are skipped)"; fi; \
	fi

# `make demo DEMO_ARGS=--keep-running` keeps it up to explore the dashboard (Ctrl-C stops it)
demo: setup
	$(BIN)/meshward demo $(DEMO_ARGS)

test: setup
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not integration"

# ruff (lint and format), the layer contracts (import-linter) and the type checker (mypy)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: setup
	@for b in bench/*.py; do echo "== $$b"; PYTHONPATH=. $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache dashboard/node_modules meshward/app/static/dashboard

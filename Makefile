# Every target installs what is missing first, so a fresh Debian 12 machine needs
# nothing but `make demo` or `make test`. Re-running is cheap: packages already
# present are skipped and the virtualenv is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := qemu-system-x86 busybox-static erofs-utils e2fsprogs skopeo docker-registry openssl python3-venv dpkg apt ca-certificates procps podman nftables iperf3 passt containernetworking-plugins keystone
# What bench/ compares Hyper with (gVisor, runc/crun, containerd) and builds with (gcc); not needed by make test.
BENCH_PACKAGES := runsc runc crun containerd gcc libc6-dev util-linux
APT_UPDATED := /var/lib/apt/periodic/.hyper-apt-updated
# The tests' SPDY/3.1 client (tests/support/spdy_client.js): npm's spdy-transport, pinned,
# under the virtualenv; node and npm from Debian (nodejs, npm) when the machine has none.
SPDY_TRANSPORT := 3.0.0
NODE_CLIENT := $(VENV)/node_modules/.spdy-transport-$(SPDY_TRANSPORT)

.PHONY: demo test lint typecheck unit integration system-deps bench-deps install-debian venv test-deps bench clean

system-deps:
	@$(MAKE) --no-print-directory install-debian PACKAGES='$(DEBIAN_PACKAGES)'

bench-deps:
	@$(MAKE) --no-print-directory install-debian PACKAGES='$(BENCH_PACKAGES)'

install-debian:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/.installed: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(NODE_CLIENT): | $(BIN)/.installed
	@command -v npm >/dev/null || $(MAKE) --no-print-directory install-debian PACKAGES='nodejs npm'
	npm install --prefix $(VENV) --no-save --no-audit --no-fund --loglevel=error spdy-transport@$(SPDY_TRANSPORT)
	touch $@

venv: system-deps $(BIN)/.installed

# Only the tests need node: make demo stays free of it.
test-deps: venv $(NODE_CLIENT)

demo: venv
	$(BIN)/python scripts/build_busybox_image.py
	$(BIN)/hyper info
	$(BIN)/hyper run --rm localhost/busybox sh -c 'echo "hello from $$(uname -sr) in a VM"; cat /etc/os-release 2>/dev/null || true'

lint: venv
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

integration: test-deps
	$(BIN)/pytest -q tests/integration

test: lint typecheck test-deps
	$(BIN)/pytest -q -rs tests

bench: venv bench-deps
	$(BIN)/python bench/boot.py

clean:
	rm -rf $(VENV) build src/*.egg-info test-results

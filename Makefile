# convscope: `make demo` (set up, precompute the default zoo, serve it) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONVSCOPE := $(VENV)/bin/convscope
# The CIFAR-10 ResNets ship beside this checkout in ../shared/zoo; elsewhere they download by URL.
ZOO_DIR := $(abspath ../shared/zoo/cifar10-resnets)
ifneq ($(wildcard $(ZOO_DIR)),)
export CONVSCOPE_ZOO_DIR ?= $(ZOO_DIR)
endif
APT_PACKAGES := chromium redis-server dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo precompute serve test test-fast clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Debian packages the browser tests and the Redis queue tests need.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; fi

precompute: setup
	$(CONVSCOPE) precompute --all --progress

serve: setup
	$(CONVSCOPE) serve

# a model that cannot be fetched (offline, say) is reported by precompute; the demo serves the rest
demo: setup
	-$(CONVSCOPE) precompute --all --progress
	$(CONVSCOPE) serve

# system-deps ran, so a test that skips for a missing package fails instead (tests/conftest.py)
test: setup system-deps
	CONVSCOPE_STRICT_DEPS=1 $(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) test-output .pytest_cache

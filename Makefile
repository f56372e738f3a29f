# `make run` and `make test` work on a fresh machine with Python 3.11, gcc and make.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE := $(wildcard native/*.pyx native/*.h)

.PHONY: setup run test test-native test-pure bench loadtest clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py requirements-dev.txt $(NATIVE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gateway run -c configs/gateway.toml

# The whole suite on the compiled modules, then again on their pure-Python twins.
test: $(STAMP)
	$(MAKE) test-native test-pure

test-native: $(STAMP)
	$(PY) -m pytest -q

test-pure: $(STAMP)
	GATEWAY_PURE_PYTHON=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

# The quick variant of every load-test scenario (reports under loadtest/reports/); fails if any one failed.
LOADTEST_QUICK := steady-single peak-ramp burst-batch many-senders flaky-network crash-restart e2e-encrypted
loadtest: $(STAMP)
	@rc=0; for s in $(LOADTEST_QUICK); do $(PY) -m loadtest run loadtest/scenarios/$$s.toml --quick || rc=1; done; exit $$rc

clean:
	rm -rf build gateway/_native/*.so native/*.c *.egg-info $(VENV)

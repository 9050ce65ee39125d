# sdq: `make demo` and `make test` set up everything they need in .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
TORCH_VERSION ?= $(shell sed -n 's/^torch==//p' $(CONSTRAINTS))
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench up clean system-deps test-deps

# Every install is constrained to the tested versions (constraints.txt, shared with the Docker images).
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==$(TORCH_VERSION)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[producer,worker,local,dev]'
	touch $(STAMP)

install: $(STAMP) system-deps

# System packages from apt-get when missing (needs root or sudo on Debian/Ubuntu): redis-server for
# the local stack and tests; libGL/glib for opencv, which the invisible watermark uses.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	ldconfig -p | grep -q 'libGL.so.1 ' || missing="$$missing libgl1"; \
	ldconfig -p | grep -q 'libglib-2.0.so.0 ' || missing="$$missing libglib2.0-0"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing$$missing with apt-get"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install
	$(VENV)/bin/sdq demo

up: install
	$(VENV)/bin/sdq up

# The tests also validate docker-compose.yml with Debian's docker-compose (no Docker engine needed)
# and drive the web page in Debian's headless chromium (Playwright never downloads a browser).
test-deps:
	@missing=""; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing$$missing with apt-get (compose validation, web page tests, multi-host test)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Two passes: everything but the timing-sensitive tests side by side on TEST_WORKERS pytest-xdist workers
# (each with its own redis/producer/worker stack on free ports; most of the wall time is waiting on
# timeouts by design, so three share two cores well: 12.5 min for this pass on an idle 2-core machine),
# then the `serial` tests (latency bounds, speed ratios) alone on the machine.
TEST_WORKERS ?= 3
test: install test-deps
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not serial"
	$(PY) -m pytest -m serial

# The unit tier: pure logic only, no services started, under a minute.
test-fast: install
	$(PY) -m pytest -m unit -q

# `make bench BENCH_ARGS="--device cuda"` on a GPU host (see bench/README.md).
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache

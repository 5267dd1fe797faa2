# Everything a fresh machine with python3 needs: a venv in .venv, the package, its tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HANDLER ?= examples.hello:fun
PORT    ?= 8000

.PHONY: run test test-pure test-slow coverage test-wheel test-stress lint typecheck unit integration conformance compose-test bench \
        loadtest chaos clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77'
	@# The distribution was called "cluster" before 0.2.0 (a name PyPI gives to another project).
	-@$(BIN)/pip uninstall --quiet --yes cluster 2>/dev/null
	@# Pure Python here: $(COMPILED) compiles next, with the mypy this installs.
	CLUSTER_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# The hot modules, compiled with mypyc in place (cluster/compiled.py lists them; a
# process runs them from source while any is newer than the build): compiled again
# whenever one of them changes. Without a C compiler the package stays pure Python.
HOT := $(shell $(PYTHON) -c "import runpy; from pathlib import Path; \
  m = runpy.run_path('cluster/compiled.py'); \
  print(*(m['source_path'](n, Path('cluster')) for n in m['HOT_MODULES']))")
COMPILED := $(VENV)/.compiled
$(COMPILED): $(STAMP) $(HOT) cluster/compiled.py
	CLUSTER_STRICT_BUILD=1 $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/cluster --version
	touch $(COMPILED)

# What running needs, and nothing of the tests' or benchmarks' (make run); where the
# full install is there already, only the compiled modules brought up to date.
RUN_STAMP := $(VENV)/.installed-run
$(RUN_STAMP): pyproject.toml setup.py $(HOT)
	@if [ -f $(STAMP) ]; then $(MAKE) --no-print-directory $(COMPILED); else \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet -e . ; fi
	touch $(RUN_STAMP)

# Programs the tests run for real: Prometheus and promtool (the dashboard and the
# metrics are checked against them), docker-compose (validates the compose file
# without an engine), openssl (TLS test certificates), wrk (steady load through a
# rolling restart), etcd and iproute2 (the scale-out backend, three members in
# network namespaces the tests make), chromium and its driver (the chat page in a
# real browser), curl and nghttp2-client (HTTP/2 clients: curl, nghttp, h2load),
# node and npm (the JavaScript client's tests).
# Debian packages, installed once when missing.
TOOLS := $(VENV)/.tools
$(TOOLS): $(STAMP)
	@# Each command's package, only where the command is missing: a machine may have
	@# a program from elsewhere (Node.js from NodeSource, say, whose nodejs conflicts
	@# with Debian's npm), and asking apt for its Debian twin would fail the install.
	@missing=""; \
	for pair in prometheus:prometheus promtool:prometheus docker-compose:docker-compose \
	    openssl:openssl wrk:wrk etcd:etcd-server etcdctl:etcd-client ip:iproute2 \
	    chromium:chromium chromedriver:chromium-driver curl:curl h2load:nghttp2-client \
	    node:nodejs npm:npm; do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing with apt-get:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $$missing >/dev/null; \
	fi
	touch $(TOOLS)

# The JavaScript client's test dependency (ws: node 20 has no WebSocket), from its lock.
JS_DEPS := clients/js/node_modules/.installed
$(JS_DEPS): clients/js/package-lock.json $(TOOLS)
	cd clients/js && npm ci --silent --no-audit --no-fund
	touch $(JS_DEPS)

## make run: start the embedded cluster (coordinator, 1 gateway, 2 workers) on an example
run: $(RUN_STAMP)
	$(BIN)/cluster run --handler $(HANDLER) --port $(PORT)

## make test: lint, type-check, then every test not marked slow (real processes on
## 127.0.0.1) on the compiled build, then the pure-Python build's unit tests and smoke
## test; `make test-slow` runs the rest
test: lint typecheck $(TOOLS) $(JS_DEPS) $(COMPILED)
	$(BIN)/pytest -q -m "not slow"
	$(MAKE) --no-print-directory test-pure

## make coverage: every test, the slow ones too, measuring branch coverage of the tests
## and of every process they start (coverage's subprocess patch), reported on the
## terminal and in reports/coverage/. Not in make test: it makes the suite 40% slower.
## (Coverage cannot see inside compiled modules: theirs comes from the pure-Python run,
## added to the first run's in the report.)
coverage: lint typecheck $(TOOLS) $(JS_DEPS) $(COMPILED)
	$(BIN)/pytest -q --cov --cov-report=
	$(MAKE) --no-print-directory test-pure PURE_COV="--cov --cov-append --cov-report=term \
	  --cov-report=html:reports/coverage"

## make test-pure: the unit tests and a `cluster run` smoke test on pure Python (what
## runs where no C compiler was), beside the compiled build
test-pure: $(TOOLS)
	CLUSTER_PURE_PYTHON=1 $(BIN)/pytest -q -p no:cacheprovider -m "not slow" $(PURE_COV) \
	  --ignore=tests/integration --ignore=tests/compose --ignore=tests/packaging tests \
	  tests/integration/test_builds.py

## make test-slow: the tests marked slow, 5 s or more each here (the fault runs on three
## namespaced hosts, the supervisor's restarts, the browser's chat, locust, the node
## client's suite, the dispatch fuzzer...), on the compiled build; CI runs it after
## make test, so that one stays under 10 minutes on 2 cores
test-slow: $(TOOLS) $(JS_DEPS) $(COMPILED)
	$(BIN)/pytest -q -m slow

## make test-stress: the suite as on a busy machine: two busy loops run beside it (one
## per core here), STRESS_RUNS times in a row (default 3), stopping at the first red run
STRESS_RUNS ?= 3
test-stress: lint typecheck $(TOOLS) $(JS_DEPS) $(COMPILED)
	@sh -c 'while :; do :; done' & one=$$!; sh -c 'while :; do :; done' & two=$$!; \
	trap 'kill $$one $$two' EXIT INT TERM; \
	for run in $$(seq $(STRESS_RUNS)); do \
	  echo "== run $$run of $(STRESS_RUNS), beside two busy loops (pids $$one $$two)"; \
	  $(BIN)/pytest -q || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check cluster tests examples loadtests setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(COMPILED)
	$(BIN)/pytest -q --ignore=tests/integration --ignore=tests/compose tests

integration: $(TOOLS) $(COMPILED)
	$(BIN)/pytest -q tests/integration

## make compose-test: `docker compose up` for real, under podman, with images built here
## from Debian packages (docker-compose v1 against podman's API; a few minutes)
compose-test: $(TOOLS)
	@if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then \
	  echo "installing podman and debootstrap with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    podman debootstrap >/dev/null; \
	fi
	CLUSTER_COMPOSE_TEST=1 $(BIN)/pytest -q -s tests/compose

## make test-wheel: the wheel built here (compiled), installed into a fresh venv away
## from the checkout, serving (a few minutes)
test-wheel: $(STAMP)
	CLUSTER_WHEEL_TEST=1 $(BIN)/pytest -q -p no:cacheprovider tests/packaging

## make conformance: Autobahn sections 12 and 13 (compression; about 7 minutes)
conformance: $(COMPILED)
	$(BIN)/python -m loadtests.autobahn 12 13

## make bench: the side-by-side benchmarks (installs wrk and redis-server with apt-get
## when missing)
bench: $(TOOLS) $(COMPILED)
	$(BIN)/python -m loadtests.bench.http --chart docs/performance-http.svg
	$(BIN)/python -m loadtests.bench.asgi --chart docs/performance-asgi.svg
	$(BIN)/python -m loadtests.bench.blocking
	$(BIN)/python -m loadtests.bench.state
	$(BIN)/python -m loadtests.bench.broadcast
	$(BIN)/python -m loadtests.bench.overload
	$(BIN)/python -m loadtests.bench.history
	$(BIN)/python -m loadtests.bench.http2

## make chaos: mixed traffic on three namespaced hosts while faults strike (as root);
## a checker for lost writes, recovery, answers and memory; reports in reports/
CHAOS_SECONDS ?= 120
CHAOS_RUNS ?= 3
chaos: $(TOOLS) $(COMPILED)
	$(BIN)/python -m loadtests.chaos --seconds $(CHAOS_SECONDS) --runs $(CHAOS_RUNS)

## make loadtest: locust (HTTP and WebSocket users) against `cluster run` on the demo
## app, headless and bounded; HTML and CSV reports in reports/
LOAD_SECONDS ?= 30
LOAD_USERS ?= 40
loadtest: $(COMPILED)
	$(BIN)/python -m loadtests.run_locust --seconds $(LOAD_SECONDS) --users $(LOAD_USERS) \
	  --out reports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

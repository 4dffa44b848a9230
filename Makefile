# The two commands a newcomer needs are `make run` and `make test`; each installs what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
# Browser assets, served by the service itself (it works offline), from the npm registry at the exact
# versions of frontend/package-lock.json, copied into the package, gitignored: the OpenAPI viewer's
# (swagger-ui-dist) and the console's (htmx, Pico CSS, Chart.js). axe-core is copied for the browser tests
# only (they inject it into the pages); no route serves it.
STATIC_DIR := entitlements/http/static
SWAGGER_DIR := $(STATIC_DIR)/swagger
ASSETS_STAMP := $(STATIC_DIR)/.installed
SWAGGER_FILES := swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js favicon-32x32.png LICENSE NOTICE
CONSOLE_VENDOR_DIR := $(STATIC_DIR)/console/vendor
NPM := frontend/node_modules
CONSOLE_FILES := htmx.org/dist/htmx.min.js @picocss/pico/css/pico.min.css chart.js/dist/chart.umd.min.js
AXE_DIR := $(STATIC_DIR)/axe
# The browser tests drive Debian's Chromium: installed with apt when it is missing and we are root (as CI
# is); otherwise those tests are skipped with one line saying what to install.
CHROMIUM := /usr/bin/chromium
# The PgBouncer run (`make pgbouncer`, part of `make test`): the end-to-end tests and the chaos suite's
# database scenarios again, every API process through a real PgBouncer in transaction mode (Debian's
# package, installed with apt like Chromium; skipped with one line without it).
PGBOUNCER := /usr/sbin/pgbouncer
PGBOUNCER_TESTS := tests/e2e tests/chaos/test_faults.py::test_postgres_killed_and_restarted \
	tests/chaos/test_faults.py::test_postgres_stalled

.PHONY: run test lint bench lock clean unit integration e2e browser chromium chaos pgbouncer pgbouncer-package

# The virtualenv is rebuilt from the committed lock whenever the lock or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml $(ASSETS_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# npm comes from Debian's packages when the machine has none (as root, like the rest of this workplace).
$(ASSETS_STAMP): frontend/package.json frontend/package-lock.json frontend/.npmrc
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@mkdir -p $(SWAGGER_DIR) $(CONSOLE_VENDOR_DIR) $(AXE_DIR)
	cp $(addprefix $(NPM)/swagger-ui-dist/,$(SWAGGER_FILES)) $(SWAGGER_DIR)/
	cp $(addprefix $(NPM)/,$(CONSOLE_FILES)) $(CONSOLE_VENDOR_DIR)/
	cp $(NPM)/htmx.org/LICENSE $(CONSOLE_VENDOR_DIR)/LICENSE.htmx
	cp $(NPM)/@picocss/pico/LICENSE.md $(CONSOLE_VENDOR_DIR)/LICENSE.pico.md
	cp $(NPM)/chart.js/LICENSE.md $(CONSOLE_VENDOR_DIR)/LICENSE.chartjs.md
	cp $(NPM)/axe-core/axe.min.js $(NPM)/axe-core/LICENSE $(AXE_DIR)/
	@touch $@

chromium:
	@test -x $(CHROMIUM) || [ "$$(id -u)" != 0 ] || { echo "installing Debian's chromium for the browser tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "could not install chromium: the browser tests will be skipped"; }

pgbouncer-package:
	@test -x $(PGBOUNCER) || [ "$$(id -u)" != 0 ] || { echo "installing Debian's pgbouncer for the PgBouncer tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
		|| echo "could not install pgbouncer: the PgBouncer tests will be skipped"; }

run: $(STAMP)
	$(BIN)/moments dev

# One pytest process per CPU (pytest-xdist): the tests mostly wait on fsyncs, child processes and sockets,
# so a single process left CI's two cores idle three-quarters of the time. Each worker starts its own
# embedded PostgreSQL.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL = $(BIN)/python -m pytest -n $(PYTEST_WORKERS)

test: $(STAMP) chromium pgbouncer-package
	$(PYTEST_PARALLEL) tests
	@$(MAKE) --no-print-directory pgbouncer

# PgBouncer's own tests (tests/integration/pgbouncer) run in `make integration`; this is the second pass.
pgbouncer: $(STAMP) pgbouncer-package
	@if test -x $(PGBOUNCER); then MOMENTS_TEST_PGBOUNCER=1 $(BIN)/python -m pytest $(PGBOUNCER_TESTS); \
	else echo "skipped the PgBouncer run of the e2e and chaos database tests: apt-get install pgbouncer"; fi

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(PYTEST_PARALLEL) tests/integration

e2e: $(STAMP)
	$(PYTEST_PARALLEL) tests/e2e

browser: $(STAMP) chromium
	$(PYTEST_PARALLEL) tests/browser

# The chaos suite alone (also part of `make test`): faults injected into real processes under load.
chaos: $(STAMP)
	$(PYTEST_PARALLEL) tests/chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Options go in ARGS, since make takes `--repeat` as its own: `make bench ARGS="--repeat 3"`.
ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# Regenerates the lock: exact versions and hashes, no download addresses (uv.lock would record them).
lock:
	@test -x $(UV) || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"; }
	$(UV) pip compile --quiet --universal --generate-hashes --python-version 3.11 --extra dev \
		--no-emit-index-url --no-emit-find-links pyproject.toml -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache frontend/node_modules entitlements/http/static

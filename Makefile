# The two commands a newcomer needs are `make run` and `make test`; each installs what is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV := $(BIN)/uv
STAMP := $(VENV)/.installed
# The OpenAPI viewer's assets, served by the service itself (it works offline): swagger-ui-dist from the
# npm registry at the exact version of frontend/package-lock.json, copied into the package, gitignored.
SWAGGER_DIR := entitlements/http/static/swagger
SWAGGER_STAMP := $(SWAGGER_DIR)/.installed
SWAGGER_FILES := swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js favicon-32x32.png LICENSE NOTICE

.PHONY: run test lint bench lock clean unit integration e2e

# The virtualenv is rebuilt from the committed lock whenever the lock or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml $(SWAGGER_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# npm comes from Debian's packages when the machine has none (as root, like the rest of this workplace).
$(SWAGGER_STAMP): frontend/package.json frontend/package-lock.json frontend/.npmrc
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd frontend && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@mkdir -p $(SWAGGER_DIR)
	cp $(addprefix frontend/node_modules/swagger-ui-dist/,$(SWAGGER_FILES)) $(SWAGGER_DIR)/
	@touch $@

run: $(STAMP)
	$(BIN)/moments dev

test: $(STAMP)
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

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

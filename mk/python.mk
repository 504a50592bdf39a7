# The virtual environment: created on first use, refreshed when the lock or pyproject.toml changes.
# Its Python is the Lambda runtime's version (infra/runtime.py) where that is installed, else
# python3's with a warning; PYTHON=<interpreter> chooses another (tools/venv_python.py). A .venv
# of another version is removed and built again.
# Every package comes from the lock (tools/lock.py) with its hash checked: uv first, by pip, then
# everything else by uv; the project itself last, without dependencies. The one package published
# only as source (localstripe) is built with the locked setuptools (--build-constraints), the
# project with the one just installed (--no-build-isolation): nothing unhashed is fetched.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
VENV_STAMP := $(VENV)/.installed
# the interpreter .venv is built from, written by tools/venv_python.py only when .venv is to be built
VENV_BASE := $(VENV)/.base-python
DEV_LOCK := requirements/dev.txt
# what runs tools/venv_python.py (standard library only) before .venv exists
BOOTSTRAP_PYTHON := $(or $(PYTHON),python3)

.PHONY: FORCE
$(VENV_BASE): FORCE
	@command -v $(BOOTSTRAP_PYTHON) >/dev/null || { echo "error: $(BOOTSTRAP_PYTHON) not found; install Python 3.11+"; exit 1; }
	@$(BOOTSTRAP_PYTHON) -m tools.venv_python --venv $(VENV) --record $@ $(if $(PYTHON),--python '$(PYTHON)')

$(VENV_STAMP): $(DEV_LOCK) pyproject.toml $(VENV_BASE)
	@SECONDS=0; set -e; \
	 test -x $(PY) || { base=$$(cat $(VENV_BASE)); echo "venv: creating $(VENV) with $$($$base --version) ($$base)"; $$base -m venv $(VENV); }; \
	 echo "venv: installing uv with pip from $(DEV_LOCK) (hashes required)"; \
	 awk '/^uv==/ {p = 1} p {print} p && !/\\$$/ {exit}' $(DEV_LOCK) > $(VENV)/uv-requirement.txt; \
	 $(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(VENV)/uv-requirement.txt; \
	 echo "venv: installing the $$(grep -c '^[a-z]' $(DEV_LOCK)) packages of $(DEV_LOCK) with uv (hashes required), then the project"; \
	 $(UV) pip install --python $(PY) --require-hashes -r $(DEV_LOCK) --build-constraints $(DEV_LOCK); \
	 $(UV) pip install --python $(PY) --quiet --no-deps --no-build-isolation -e .; \
	 echo "venv: ready in $${SECONDS}s with $$($(PY) --version)"
	@touch $@

.PHONY: venv lock lint format
venv: $(VENV_STAMP) ## create the virtual environment from the lock (requirements/dev.txt)

lock: venv ## update uv.lock and requirements/ after a change to pyproject.toml (UPGRADE=<package>|all)
	@$(PY) -m tools.lock $(if $(UPGRADE),--upgrade $(UPGRADE))

lint: venv ## the lock matches pyproject.toml, ruff, mypy, and payments_core's layers (import-linter)
	$(PY) -m tools.lock --check
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy layers/payments_core/python/payments_core local infra tools
	@# every function's module is named `app`: check them one by one
	@for f in functions/*/app.py; do $(VENV)/bin/mypy --no-error-summary "$$f" || exit 1; done

format: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The browser test (tests/integration/test_browser_history.py) drives Debian's headless Chromium.
.PHONY: chromium
chromium: ## install Debian's chromium for the browser test when it is missing (apt-get, as root)
	@command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }

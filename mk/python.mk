# The virtual environment: created on first use, refreshed when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

$(VENV_STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11+"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: venv lint format
venv: $(VENV_STAMP) ## create the virtual environment

lint: venv ## ruff and mypy
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

# The local stack (Kafka, PostgreSQL, localstripe, stripe-mock, moto and the Lambda emulators)
# and the test driver. Everything lives in local/; state, logs and pid files under .local/.
.PHONY: local-up local-down local-status local-env local-token invoke test

local-up: venv ## start the local stack (idempotent; prints each component's start time)
	@$(PY) -m local.stack up

local-down: venv ## stop everything local-up started
	@$(PY) -m local.stack down

local-status: venv ## show each local component, up or down, with its port
	@$(PY) -m local.stack status

local-env: venv ## print export NAME=value lines, for: eval "$(make -s local-env)"
	@$(PY) -m local.stack env

# USER must come from the command line: the shell's own $$USER is no Clerk user.
local-token: venv ## print a session token of the local issuer: make -s local-token USER=<id> [ORIGIN=<azp>]
	@if [ "$(origin USER)" != "command line" ] || [ -z "$(USER)" ]; then \
		echo "usage: make -s local-token USER=<clerk user id> [ORIGIN=<origin, default the frontend's>]" >&2; exit 2; fi
	@$(PY) -m local.issuer token "$(USER)" --origin "$(ORIGIN)"

invoke: venv ## run a handler locally: make invoke FN=authorize_payment EVENT=events/x.json
	@if [ -z "$(FN)" ] || [ -z "$(EVENT)" ]; then \
		echo "usage: make invoke FN=<function under functions/> EVENT=<event json file>" >&2; exit 2; fi
	@$(PY) -m local.invoke "$(FN)" "$(EVENT)"

test: venv lint chromium ## lint, then unit, integration and infra tests on the local stack (starts/stops it)
	@$(PY) -m local.testrun $(PYTEST_ARGS)

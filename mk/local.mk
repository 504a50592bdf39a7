# The local stack (Kafka, PostgreSQL, localstripe, stripe-mock, moto and the Lambda emulators)
# and the test driver. Everything lives in local/; state, logs and pid files under .local/.
.PHONY: local-up local-down local-status local-env local-logs local-token invoke test unit test-one compose-cli

local-up: venv ## start the local stack (idempotent; prints each component's start time)
	@$(PY) -m local.stack up

local-down: venv ## stop everything local-up started
	@$(PY) -m local.stack down

local-status: venv ## show each local component, up or down, with its port
	@$(PY) -m local.stack status

local-env: venv ## print export NAME=value lines, for: eval "$(make -s local-env)"
	@$(PY) -m local.stack env

local-logs: venv ## where each component logs; C=<component or function> prints its tail [LINES=100] [FOLLOW=1]
	@$(PY) -m local.stack logs $(C) --lines $(or $(LINES),100) $(if $(FOLLOW),--follow)

# USER must come from the command line: the shell's own $$USER is no Clerk user.
local-token: venv ## print a session token of the local issuer: make -s local-token USER=<id> [ORIGIN=<azp>]
	@if [ "$(origin USER)" != "command line" ] || [ -z "$(USER)" ]; then \
		echo "usage: make -s local-token USER=<clerk user id> [ORIGIN=<origin, default the frontend's>]" >&2; exit 2; fi
	@$(PY) -m local.stack.issuer token "$(USER)" --origin "$(ORIGIN)"

invoke: venv ## run a handler locally: make invoke FN=authorize_payment EVENT=events/x.json
	@if [ -z "$(FN)" ] || [ -z "$(EVENT)" ]; then \
		echo "usage: make invoke FN=<function under functions/> EVENT=<event json file>" >&2; exit 2; fi
	@$(PY) -m local.stack.invoke "$(FN)" "$(EVENT)"

test: venv lint chromium compose-cli ## lint, then unit, integration and infra tests on the local stack (starts/stops it)
	@$(PY) -m local.stack.testrun $(PYTEST_ARGS)

unit: venv ## the unit tests alone: no stack, no lint, seconds (PYTEST_ARGS=… passes options)
	@$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test-one: venv ## one test, file or -k selection: make test-one T=<pytest node id>; starts only what it needs
	@$(PY) -m local.stack.testrun --one $(T) $(PYTEST_ARGS)

compose-cli: venv ## build the Docker Compose CLI (pinned, from source, cached) that checks docker-compose.local.yml
	@$(PY) -m local.stack.compose_cli

# Infrastructure: the Lambda layer, the CDK app (infra/), its CLI pinned in package.json.
STAGE ?= dev
# A JSON file merged over cdk.json's payment-service context (infra/app.py), e.g.
# CONTEXT_FILE=infra/examples/import-vpc.context.json for campusG's VPC.
CONTEXT_FILE ?=
CDK_CONTEXT = -c stage=$(STAGE) $(if $(CONTEXT_FILE),-c context_file=$(CONTEXT_FILE))
LAYER_ZIP := build/layer.zip
CDK := node_modules/.bin/cdk
# Offline and quiet: no notices or telemetry calls, no Node end-of-life banner from jsii.
CDK_ENV := CDK_DISABLE_CLI_TELEMETRY=true JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION=1 JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=1
LAYER_SOURCES := requirements/layer.txt infra/build_layer.py infra/runtime.py \
	$(shell find layers/payments_core/python/payments_core -type f -not -path '*/__pycache__/*' 2>/dev/null)

$(LAYER_ZIP): $(VENV_STAMP) $(LAYER_SOURCES)
	$(PY) -m infra.build_layer

node_modules/.installed: package.json package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found; install Node.js 20+"; exit 1; }
	npm ci --no-audit --no-fund
	@touch $@

.PHONY: build synth deploy diff bootstrap infra-test capacity
build: $(LAYER_ZIP) ## build the shared Lambda layer (payments_core + dependencies, arm64/python3.12) into build/

synth: build node_modules/.installed ## synthesize the CDK app offline into cdk.out (STAGE=dev|staging|prod|campus1000, CONTEXT_FILE=…)
	$(CDK_ENV) $(CDK) synth --no-notices --quiet $(CDK_CONTEXT)

bootstrap: build node_modules/.installed ## once per account/region: cdk bootstrap for the account of your AWS credentials
	$(CDK_ENV) $(CDK) bootstrap --no-notices

diff: build node_modules/.installed ## show what `make deploy` would change (needs AWS credentials)
	$(CDK_ENV) $(CDK) diff --no-notices $(CDK_CONTEXT) payment-service-$(STAGE)

deploy: build node_modules/.installed ## deploy one stage with cdk deploy (STAGE=dev|staging|prod; needs AWS credentials)
	$(CDK_ENV) $(CDK) deploy --no-notices $(CDK_CONTEXT) payment-service-$(STAGE) --require-approval broadening

infra-test: venv ## template (cfn-lint, checkov, reachability, permissions), cdk-nag and layer tests
	$(PY) -m pytest -m infra tests/infra

# The capacity model (infra/capacity/): RATE=<orders/s> plans the campus1000 profile's settings at
# that rate; STAGE=<stage> on the command line plans that stage; neither: one line per stage.
capacity: venv ## the capacity plan and pre-deploy checklist: RATE=<orders/s> or STAGE=<stage> (else every stage)
	@$(PY) -m infra.capacity $(if $(RATE),--rate $(RATE)) $(if $(filter command line,$(origin STAGE)),--stage $(STAGE))

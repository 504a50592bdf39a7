# Developer tools (tools/): the machine-readable contract, the benchmark and the demo.
.PHONY: schemas schemas-check bench bench-reconciler demo

schemas: venv ## generate schemas/ (JSON Schema per command and event, AsyncAPI) from the models
	@$(PY) -m tools.schemas

schemas-check: venv ## fail if schemas/ is out of date with the models
	@$(PY) -m tools.schemas --check

bench: venv ## measure authorize/webhook overhead, end-to-end latency, cold imports (stack started if needed)
	@$(PY) -m tools.bench

bench-reconciler: venv ## the reconciler's checks/s at its Stripe pace and the final payments a day it keeps up with (LATENCY_MS=300)
	@$(PY) -m tools.bench.reconciler --latency-ms $(or $(LATENCY_MS),300)

demo: venv ## play the campusG payment conversation against the local stack (starts it; leaves it running)
	@$(PY) -m local.stack up
	@$(PY) -m tools.demo

# Dead letters: list them, show each command, re-queue the chosen ones to payment_commands.
# Locally against the local stack; with STAGE=… on the command line, through the stage's
# redrive_commands function (MSK is reachable only from its VPC), with the AWS CLI's credentials.
.PHONY: redrive
REDRIVE_PAYLOAD = {$(if $(ALL),"all": true,"ids": [$(subst $(eval) ,$(comma),$(patsubst %,"%",$(IDS)))])}
comma := ,
ifeq ($(origin STAGE),command line)
redrive: ## list dead letters; IDS="0:12 0:13" or ALL=1 re-queues them (STAGE=… runs it in AWS)
	@fn=$$(aws cloudformation describe-stacks --stack-name payment-service-$(STAGE) \
	      --query "Stacks[0].Outputs[?OutputKey=='RedriveFunctionName'].OutputValue" --output text) \
	 && test -n "$$fn" && test "$$fn" != None \
	 || { echo "redrive: error: no RedriveFunctionName output on payment-service-$(STAGE): deploy the stage (make deploy STAGE=$(STAGE))" >&2; exit 2; }; \
	 out=$$(mktemp) && aws lambda invoke --function-name "$$fn" --cli-binary-format raw-in-base64-out \
	      --payload '$(REDRIVE_PAYLOAD)' "$$out" >/dev/null && $(PY) -m json.tool "$$out" \
	 && ! grep -q '"error"' "$$out"
else
redrive: venv ## list dead letters; IDS="0:12 0:13" or ALL=1 re-queues them (STAGE=… runs it in AWS)
	@$(PY) -m tools.redrive $(if $(ALL),--all) $(IDS)
endif

# payment_commands' partitions: the status, or PARTITIONS=<n> grows the topic safely (drain, pause
# the mapping, grow, resume: docs/operations-partitions.md). Locally against the local stack;
# with STAGE=… on the command line, the stage's mapping and topics function (an imported
# cluster: the commands are printed).
.PHONY: partitions
partitions: venv ## commands topic: status; PARTITIONS=<n> grows it (drain, pause, grow, resume); STAGE=… in AWS
	@$(PY) -m tools.partitions $(if $(PARTITIONS),grow $(PARTITIONS)) \
	  $(if $(filter command line,$(origin STAGE)),--stage $(STAGE)) $(if $(CONTEXT_FILE),--context-file $(CONTEXT_FILE))

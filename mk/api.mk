# The payment API (functions/payment_api): its OpenAPI document and a signed webhook invocation.
.PHONY: openapi openapi-check invoke-webhook

openapi: venv ## write the payment API's OpenAPI document to docs/openapi.json
	@$(PY) scripts/openapi.py

openapi-check: venv ## fail when docs/openapi.json and the routes disagree
	@$(PY) scripts/openapi.py --check

invoke-webhook: venv ## re-sign events/api_stripe_webhook.json now and invoke payment_api with it
	@$(PY) scripts/sign_webhook_event.py events/api_stripe_webhook.json | $(PY) -m local.stack.invoke payment_api -

# Developer tools (tools/): the machine-readable contract, the benchmark and the demo.
.PHONY: schemas schemas-check bench demo

schemas: venv ## generate schemas/ (JSON Schema per command and event, AsyncAPI) from the models
	@$(PY) -m tools.schemas

schemas-check: venv ## fail if schemas/ is out of date with the models
	@$(PY) -m tools.schemas --check

bench: venv ## measure authorize/webhook overhead, end-to-end latency, cold imports (stack started if needed)
	@$(PY) -m tools.bench

demo: venv ## play the campusG payment conversation against the local stack (starts it; leaves it running)
	@$(PY) -m local.stack up
	@$(PY) -m tools.demo

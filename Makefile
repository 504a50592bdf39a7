# The documented interface of the project. Every target sets up what it needs itself.
# Pieces live in mk/*.mk, one file per concern (python env, local stack, infrastructure).
SHELL := /bin/bash
.DEFAULT_GOAL := help

include mk/python.mk
include mk/local.mk
include mk/infra.mk
include mk/tools.mk
include mk/api.mk

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Bindery: every target here is what CI runs (.ci/run = `make test`).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv/bin

.PHONY: help install infra-up infra-down up down status test test-unit lint bench logs

help:
	@echo "make up         install, start infrastructure and services (http://127.0.0.1:8585/)"
	@echo "make down       stop services and infrastructure"
	@echo "make status     show what runs"
	@echo "make test       install, start infrastructure, run the whole test suite (what CI runs)"
	@echo "make test-unit  unit tests only (no broker needed)"
	@echo "make lint       ruff, ruff format --check, mypy, import-linter"
	@echo "make bench      install, start infrastructure, run the benchmarks"
	@echo "make logs       follow the service logs"

install:
	scripts/install.sh

infra-up:
	scripts/infra.sh up

infra-down:
	scripts/infra.sh down

up: install infra-up
	scripts/services.sh up
	@echo "Bindery is running: http://127.0.0.1:8585/"

down:
	scripts/services.sh down
	scripts/infra.sh down

status:
	-scripts/infra.sh status
	-scripts/services.sh status

# Two podman nodes with separate image stores: the scheduler's placement tests need both.
test: export BINDERY_NODE_COUNT ?= 2
test: install infra-up
	scripts/test.sh

test-unit:
	$(VENV)/pytest tests/unit -q

lint:
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports

bench: export BINDERY_NODE_COUNT ?= 2
bench: install infra-up
	$(VENV)/python bench/run.py

logs:
	mkdir -p .bindery/logs
	tail -n 50 -F .bindery/logs/*.log

# qes-monitoring: one command sets up and starts everything, one runs the tests.
# scripts/setup.sh is idempotent (a second run takes seconds) and writes
# var/env.sh with REDIS_URL and DATABASE_URL for the private servers it starts.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

BIN := .venv/bin

.PHONY: help setup run test stop

help:
	@echo "make run    set up this machine, start Redis + PostgreSQL/TimescaleDB, run 'qesmon up'"
	@echo "make test   set up (with promtool/amtool), then ruff, mypy and pytest"
	@echo "make stop   stop the private Redis and PostgreSQL"
	@echo "make setup  set up and start the private servers only"

setup:
	scripts/setup.sh

run:
	scripts/setup.sh
	. var/env.sh && exec $(BIN)/qesmon up

test:
	scripts/setup.sh --test
	. var/env.sh && $(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy && $(BIN)/pytest -n 2

stop:
	scripts/setup.sh --stop

# Every target bootstraps what it needs: the virtual env from uv.lock (and Java, at first use).
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
SYNCED := $(VENV)/.synced

.PHONY: help demo demo-local stop status jars test test-fast lint format typecheck bench bench-quick system-deps clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(SYNCED): pyproject.toml uv.lock scripts/bootstrap.sh
	@scripts/bootstrap.sh
	@touch $@

# The pinned jars (spark_jobs/jars.lock): Spark's Kafka source, the Kafka broker and S3A, downloaded
# once into .cache/jars/ and verified by checksum on every run (a second run downloads nothing).
jars: $(SYNCED)  ## download and verify the pinned jars (Spark's Kafka source, the Kafka broker, S3A)
	@$(BIN)/python -m spark_jobs.jars fetch

# `make demo KAFKA=1` adds a Kafka broker and a third stream, word_count_kafka, on topic lines.
demo: $(SYNCED) jars  ## start Airflow with both stream DAGs running on sample text (UI, login)
	$(BIN)/python scripts/stack.py start $(if $(KAFKA),--kafka)

stop:  ## stop everything `make demo` started
	$(BIN)/python scripts/stack.py stop

status:  ## is the stack running; each stream's state and last batch
	$(BIN)/python scripts/stack.py status

demo-local: $(SYNCED) jars  ## without Airflow: run both jobs on sample text and show their output
	$(BIN)/python scripts/demo.py

# The suite runs on TEST_WORKERS pytest-xdist workers, one per core up to 4, tests that share a
# stack or a module-scoped fixture kept on one worker (`xdist_group`), the slowest started first.
# On 2 cores a third worker only raised the load to 8-12. `make test TEST_WORKERS=1` runs it
# on one.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PARALLEL := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: lint typecheck system-deps jars  ## lint, type-check and run every test (what CI runs; on TEST_WORKERS workers)
	$(BIN)/pytest $(PARALLEL) --durations=15

test-fast: $(SYNCED) jars  ## the tests that need no Spark: unit tests and DAG checks
	$(BIN)/pytest $(PARALLEL) -m "not spark and not slow"

lint: $(SYNCED)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(SYNCED)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(SYNCED)  ## mypy on the packages
	$(BIN)/mypy

bench: $(SYNCED)  ## the performance report: measure everything in one run, write docs/performance.md
	$(BIN)/python bench/report.py --mode full

BENCH_OUT ?= .cache/bench-quick
bench-quick: $(SYNCED)  ## the same report on small inputs (about 10 min) into BENCH_OUT, not docs/
	$(BIN)/python bench/report.py --mode quick --out $(BENCH_OUT)

system-deps:  ## Debian packages the integration tests use (chromium, docker-compose, postgresql, prometheus, alertmanager)
	@scripts/system-deps.sh

clean:  ## remove the virtual env, caches and demo data
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .airflow .spark-cluster data

# roastq: `make demo` runs the main job on embedded defaults; `make test` runs the suite.
# Both create .venv and install what they need: a fresh machine needs only Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-unit lint up console screenshots bench bench-long bench-peers install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/roastq demo

# The broker-independent tests run a second time with messages in RabbitMQ (tests/rabbitmq_pass.py),
# with the RabbitMQ-only ones; without a RabbitMQ that pass is skipped with the reason printed.
RABBITMQ_TESTS := tests/test_evaluation.py tests/test_failures.py tests/test_enqueue.py \
                  tests/test_outbox.py tests/test_rabbitmq.py tests/test_console.py

# The habits: lint and format (ruff) and the layer check (import-linter, docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The fast tier: the tests that need no Postgres, simulator or worker (marked `unit` at collection).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

# The main pass runs in parallel (pytest-xdist, one process a test file, each with a database of
# its own): the tests mostly wait on worker pools, so three processes fit 2 cores and 100
# Postgres connections. The RabbitMQ pass likewise: each process has a virtual host of its own
# (tests/rabbitmq_pass.py); it leaves out the sloppy-answer variants (`[sloppy]`), which test how
# answers are repaired, not the broker, and run in the main pass.
TEST_JOBS ?= 3

test: lint
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile
	ROASTQ_TEST_BROKER=rabbitmq $(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile -k "not sloppy" $(RABBITMQ_TESTS)

up: $(STAMP)
	$(BIN)/roastq up

console: $(STAMP)
	$(BIN)/roastq console

# Screenshots of the console's pages (docs/console/*.png, shown in the README), taken by the
# browser test in headless Chromium against a fresh database.
screenshots: $(STAMP)
	ROASTQ_SCREENSHOTS=$(CURDIR)/docs/console $(BIN)/python -m pytest -q tests/test_console_browser.py

# `make bench`: the broker, concurrency and quick LLM benchmarks (about 5 minutes on 2 cores).
# `make bench-long`: the 3-minute shared rate-limit run, the broker ceiling search and the sloppy-answer
# runs (about 15).
BENCH      := bench/bench_broker.py bench/bench_concurrency.py bench/llm_cache_hit.py bench/llm_faults.py \
              bench/console_pages.py
BENCH_LONG := bench/llm_ratelimit.py bench/bench_scaling.py bench/llm_sloppy.py

bench: $(STAMP)
	@for script in $(BENCH); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

bench-long: $(STAMP)
	@for script in $(BENCH_LONG); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# `make bench-peers`: workloads A, B, C, E against roastq, stock dramatiq-pg, pgqueuer and
# procrastinate (installed at run time into bench/peers/.venv), pg-boss and graphile-worker (Node 22
# and the packages from npm, into bench/peers/.node), 3 reps, medians (about 15 minutes).
bench-peers: $(STAMP)
	$(BIN)/python bench/peers/run.py

clean:
	rm -rf $(VENV) .roastq .pytest_cache

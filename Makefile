# roastq: `make demo` runs the main job on embedded defaults; `make test` runs the suite.
# Both create .venv and install what they need: a fresh machine needs only Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test up bench install clean

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
                  tests/test_outbox.py tests/test_rabbitmq.py

test: $(STAMP)
	$(BIN)/python -m pytest
	ROASTQ_TEST_BROKER=rabbitmq $(BIN)/python -m pytest $(RABBITMQ_TESTS)

up: $(STAMP)
	$(BIN)/roastq up

bench: $(STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .roastq .pytest_cache

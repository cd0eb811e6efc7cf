# The README's two commands: `make demo` and `make test`. Both set up everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on these machines pip takes its CPU build from the local disk.
TORCH_SPEC ?= torch==2.13.0
# Where the book's data files live (the-verdict.txt, SMSSpamCollection.tsv, instruction-data.json).
export HF_GPT_SCRATCH_DATA ?= $(abspath ../shared/data)

.PHONY: install test test-fast test-installed demo clean

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
	$(MAKE) test-installed

# The hub and convert tests against `pip install .` (a wheel in a scratch folder, not the editable checkout):
# package data (the card template, the metric scripts) and entry points must work from an install.
test-installed: install
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && mkdir "$$tmp/src" && \
	cp -r hf_gpt_scratch pyproject.toml README.md "$$tmp/src" && \
	$(PY) -m pip wheel -q --no-deps --no-build-isolation "$$tmp/src" -w "$$tmp/wheel" && \
	$(PY) -m pip install -q --no-deps --target "$$tmp/site" "$$tmp"/wheel/*.whl && \
	HF_GPT_SCRATCH_INSTALLED="$$tmp/site" PYTHONPATH="$$tmp/site" $(PY) -P -m pytest -q -p no:cacheprovider \
		tests/test_hub.py tests/test_convert.py

test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) recipes/demo.py --output_dir runs/demo

clean:
	rm -rf $(VENV) runs

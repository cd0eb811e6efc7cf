"""The import-linter contract in pyproject.toml (run by `make test` as `lint-imports`) names every module of
the package, so a new training-layer module cannot slip past it by being left off the forbidden list."""

import pkgutil
from pathlib import Path

import pytest

import hf_gpt_scratch

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_contract_names_every_module():
    (contract,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    named = set(contract["source_modules"]) | set(contract["forbidden_modules"])
    modules = {f"hf_gpt_scratch.{m.name}" for m in pkgutil.iter_modules(hf_gpt_scratch.__path__)}
    assert modules - named == set(), "add these modules to the contract's source_modules or forbidden_modules"
    assert named - modules - {"hf_gpt_scratch", "hf_gpt_scratch.metrics.**"} == set(), "the contract names modules that are gone"

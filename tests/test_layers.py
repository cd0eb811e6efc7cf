"""The import-linter contract in pyproject.toml (run by `make test` as `lint-imports`) covers the whole
package: every top-level module is a core module it checks, or the training layer it forbids to them."""

import pkgutil
from pathlib import Path

import pytest

import hf_gpt_scratch

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_contract_covers_every_module():
    (contract,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert contract["forbidden_modules"] == ["hf_gpt_scratch.training", "hf_gpt_scratch.training.**"]
    core = set(contract["source_modules"]) - {"hf_gpt_scratch"}
    modules = {f"hf_gpt_scratch.{m.name}" for m in pkgutil.iter_modules(hf_gpt_scratch.__path__)}
    assert modules - core == {"hf_gpt_scratch.training"}, "a new module belongs in the core list or under training/"
    assert core - modules == set(), "the contract names modules that are gone"

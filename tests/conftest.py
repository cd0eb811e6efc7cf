import os
from pathlib import Path

import pytest
import torch

# Tests run offline: nothing may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_GPT_SCRATCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

import hf_gpt_scratch  # noqa: E402  (registers the Auto classes)


def tiny_config(**overrides) -> hf_gpt_scratch.GPTScratchConfig:
    """A model small enough to run in milliseconds; dropout off so runs are comparable."""
    kwargs = dict(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
    kwargs.update(overrides)
    return hf_gpt_scratch.GPTScratchConfig(**kwargs)


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ["HF_GPT_SCRATCH_DATA"])
    if not (path / "the-verdict.txt").exists():
        pytest.skip(f"book data not found in {path} (set HF_GPT_SCRATCH_DATA)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

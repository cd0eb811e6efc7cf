import contextlib
import importlib.util
import math
import json
import io
import os
import re
import subprocess
import sys
import unittest.mock
from pathlib import Path

import pytest
import torch

# Tests run offline: nothing may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_GPT_SCRATCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

import hf_gpt_scratch  # noqa: E402  (registers the Auto classes)

# `make test-installed` runs tests against `pip install .` (a wheel, not the checkout): the package must come
# from there, here and in every subprocess (PYTHONSAFEPATH keeps `python -m`/`-c` from importing the checkout).
INSTALLED = os.environ.get("HF_GPT_SCRATCH_INSTALLED")
if INSTALLED and not hf_gpt_scratch.__file__.startswith(str(Path(INSTALLED).resolve())):
    raise RuntimeError(f"HF_GPT_SCRATCH_INSTALLED={INSTALLED}, but hf_gpt_scratch came from {hf_gpt_scratch.__file__}")


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


# ---------------------------------------------------------------- running the recipes

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
DATA = Path(os.environ["HF_GPT_SCRATCH_DATA"])
VERDICT = DATA / "the-verdict.txt"
needs_verdict = pytest.mark.skipif(not VERDICT.is_file(), reason=f"book data not found in {DATA}")


def recipe_env(**extra) -> dict[str, str]:
    """The environment of a recipe run in a subprocess: offline, the book's data; `extra` overrides."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env["HF_GPT_SCRATCH_DATA"] = str(DATA)
    env["TOKENIZERS_PARALLELISM"] = "false"
    if INSTALLED:
        env["PYTHONSAFEPATH"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_command(cmd, timeout=600, input=None, **env):
    """Run `cmd` from the repository root with `recipe_env(**env)`; a failure shows its output."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=recipe_env(**env), timeout=timeout, input=input, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def load_script(path: Path, name: str):
    """A script of recipes/ or benchmarks/ (folders that are no package) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def load_recipe(name: str):
    """recipes/<name>.py imported as a module (its `main(args)` runs the recipe in-process)."""
    return load_script(RECIPES / f"{name}.py", f"recipe_{name}")


def finite_positive(x) -> bool:
    """A measured number that makes sense: finite and above zero."""
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run_recipe(name: str, *args, input: str | None = None) -> str:
    """recipes/<name>.py's `main(args)` in this process (no interpreter start-up, no imports again),
    with `input` as stdin; returns what it printed. Keep subprocesses (`run_command`) for what needs
    a fresh process: launchers, a killed run, remote code."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.ExitStack() as stack:
        if input is not None:
            stack.enter_context(unittest.mock.patch("sys.stdin", io.StringIO(input)))
        load_recipe(name).main([str(a) for a in args])
    return out.getvalue()


@pytest.fixture(scope="session")
def verdict_bpe_dir(tmp_path_factory):
    """A 512-token byte-level BPE trained on the-verdict.txt: small logits, fast steps."""
    if not VERDICT.is_file():
        pytest.skip(f"book data not found in {DATA}")
    from hf_gpt_scratch.tokenization import train_bpe_tokenizer

    path = tmp_path_factory.mktemp("verdict_bpe")
    train_bpe_tokenizer([VERDICT.read_text(encoding="utf-8")], vocab_size=512).save_pretrained(path)
    return path


# ---------------------------------------------------------------- a model and its GPT-2 export, on disk

CLIENT_TEXTS = REPO / "tests" / "lm_eval_tasks"


@pytest.fixture(scope="session")
def client_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny model saved with its code (`"ours"`) and its stock `GPT2LMHeadModel` export of the same
    weights (`"gpt2"`), each with the same tokenizer, for clients that load a folder (lm-eval, TRL).

    Context 32 tokens; every weight is perturbed, so no norm is the identity and no bias is zero.
    The tokenizer is a byte-level BPE with GPT-2's pipeline trained on the lm-eval task texts (about
    500 tokens, `<|endoftext|>` = eos = pad = id 0, `<|pad|>` = id 1): GPT-2's own 50k vocabulary works
    the same but makes `datasets` spend seconds hashing the tokenizer on every TRL `map`."""
    from hf_gpt_scratch.convert import scratch_to_gpt2
    from hf_gpt_scratch.tokenization import train_bpe_tokenizer

    texts = [
        value
        for f in sorted(CLIENT_TEXTS.glob("*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
        for value in json.loads(line).values()
        if isinstance(value, str)
    ]
    tok = train_bpe_tokenizer(texts, vocab_size=512, special_tokens=("<|endoftext|>", "<|pad|>"))
    torch.manual_seed(0)
    model = hf_gpt_scratch.GPTScratchForCausalLM(
        tiny_config(vocab_size=len(tok), qkv_bias=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    root = tmp_path_factory.mktemp("client_models")
    dirs = {"ours": root / "ours", "gpt2": root / "gpt2"}
    for name, m in (("ours", model), ("gpt2", scratch_to_gpt2(model))):
        m.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    return dirs


# The Trainer's resume files inside checkpoint-N folders (torch.save pickles; DeepSpeed's in global_stepN/).
_TRAINER_PICKLES = re.compile(r"(.*/)?checkpoint-\d+/(.*/)?(optimizer\.pt|scheduler\.pt|scaler\.pt|"
                              r"rng_state(_\d+)?\.pth|training_args\.bin|global_step[^/]*/.+)")


def pickle_files(folder: str | Path, allow_trainer_checkpoints: bool = True) -> list[str]:
    """Pickle-format files (by suffix) under `folder`, relative paths, sorted; with
    `allow_trainer_checkpoints`, not the Trainer's resume files inside checkpoint-N folders."""
    from hf_gpt_scratch.training.faults import PICKLE_SUFFIXES

    found = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")
                   if p.suffix in PICKLE_SUFFIXES and p.is_file())
    return [f for f in found if not (allow_trainer_checkpoints and _TRAINER_PICKLES.fullmatch(f))]

"""Nothing lost, nothing silent (hf_gpt_scratch.training.faults, the loading and saving of
hf_gpt_scratch.training.loading, and their use in the recipes and convert):

1. a finished model or a user's file is never destroyed: not by a second run, a resume from
   another run, a convert or a failure; the final save replaces a model as one set, and
   --overwrite_output_dir leaves nothing of the old run to be resumed or pushed;
2. every trust decision is explicit: no "run custom code? [y/N]" prompt in a terminal, and convert
   loads strictly;
3. damaged or foreign checkpoints are named, before training;
4. (one tokenizer loader, one strict check: `tokenization.load_tokenizer`, `loading.check_loading_info`);
5. a NaN/infinite loss stops training before a checkpoint of the broken step is written, and a
   run killed with SIGKILL resumes to exactly the uninterrupted result.
"""

import ast
import errno
import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers import default_data_collator

import hf_gpt_scratch
from hf_gpt_scratch.training import convert_cli
from hf_gpt_scratch.training.arguments import DataArguments, ModelArguments, parse_recipe_args
from hf_gpt_scratch.training.callbacks import default_callbacks
from hf_gpt_scratch.training.faults import (
    NonFiniteLossError,
    NonFiniteLossGuard,
    OutputDirNotEmptyError,
    check_output_dir,
    last_complete_checkpoint,
    resolve_resume_checkpoint,
    save_pretrained_to,
)
from hf_gpt_scratch.training.hub import pushed_files
from hf_gpt_scratch.training.loading import (
    CheckpointMismatchError,
    load_tokenizer_for,
    train_model,
)
from hf_gpt_scratch.tokenization import gpt2_tokenizer, load_tokenizer, train_bpe_tokenizer

from conftest import RECIPES, REPO, VERDICT, load_recipe, needs_verdict, pickle_files, recipe_env, tiny_config

PRETRAIN = RECIPES / "pretrain.py"
# dropout on: resuming must also restore the RNG state (the Trainer's rng_state.pth)
TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.1"
TYPES = (ModelArguments, DataArguments, TrainingArguments)


@pytest.fixture(scope="module")
def bpe_dir(verdict_bpe_dir):
    return verdict_bpe_dir


def pretrain_args(bpe_dir, out, *extra):
    """A two-step pretrain run of a tiny model, no evaluation, for `recipes/pretrain.py`'s main."""
    return ["--tokenizer_name", str(bpe_dir), "--config_overrides", TINY, "--block_size", "32", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--eval_on_start", "false",
            "--logging_steps", "1", "--disable_tqdm", "true", "--max_new_tokens", "2", "--output_dir", str(out),
            *map(str, extra)]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("all_results.json", "{}")):
        (folder / name).write_text(text)
    return snapshot(folder)


# --------------------------------------------------------------------------------------------
# 1. A finished model or a user's file is never destroyed
# --------------------------------------------------------------------------------------------


def test_finished_model_is_refused_before_any_work(tmp_path):
    before = _finished(tmp_path / "out")
    with pytest.raises(OutputDirNotEmptyError) as info:
        parse_recipe_args(TYPES, args=["--output_dir", str(tmp_path / "out")])
    message = str(info.value)
    assert str(tmp_path / "out") in message and "--overwrite_output_dir" in message
    assert "config.json" in message and "model.safetensors" in message
    assert snapshot(tmp_path / "out") == before


def test_overwrite_and_resume_are_allowed(tmp_path):
    out = tmp_path / "out"
    _finished(out)
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--overwrite_output_dir"])
    assert training_args.overwrite_output_dir is True
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--overwrite_output_dir", "false"],
                                             check_output=False)
    assert training_args.overwrite_output_dir is False
    (out / "checkpoint-3").mkdir()
    for resume in ("last", str(out / "checkpoint-3")):  # continuing the run that is there
        *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--resume_from_checkpoint", resume])
        assert training_args.resume_from_checkpoint == resume
    flags = tmp_path / "flags.json"  # a JSON file of flags takes the flag too
    flags.write_text(json.dumps({"output_dir": str(out), "overwrite_output_dir": True}))
    *_, training_args, _ = parse_recipe_args(TYPES, args=[str(flags)])
    assert training_args.overwrite_output_dir is True


def test_other_files_and_empty_folders_do_not_block(tmp_path):
    check_output_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("my notes")
    (tmp_path / "data" / "train.csv").write_text("text,label\n")
    check_output_dir(tmp_path / "data")
    # checkpoints of an interrupted run block too, and the message says how to continue it
    (tmp_path / "data" / "checkpoint-8").mkdir()
    with pytest.raises(OutputDirNotEmptyError, match="--resume_from_checkpoint last"):
        check_output_dir(tmp_path / "data")


@needs_verdict
def test_pretrain_recipe_refuses_then_overwrites_when_told(tmp_path, bpe_dir):
    recipe = load_recipe("pretrain")
    out = tmp_path / "run"
    first = recipe.main(pretrain_args(bpe_dir, out))
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputDirNotEmptyError, match="--overwrite_output_dir"):
        recipe.main(pretrain_args(bpe_dir, out, "--seed", 7))
    assert (out / "model.safetensors").read_bytes() == weights
    second = recipe.main(pretrain_args(bpe_dir, out, "--seed", 7, "--overwrite_output_dir"))
    assert (out / "model.safetensors").read_bytes() != weights  # another seed, another model
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["train_loss"] == pytest.approx(second["train_loss"])
    assert math.isfinite(first["train_loss"])


@needs_verdict
def test_a_trained_tokenizer_in_the_output_dir_is_kept(tmp_path):
    """A folder holding only a tokenizer (`python -m hf_gpt_scratch.training.train_tokenizer`) is not
    replaced by GPT-2's BPE, neither by a recipe nor by convert."""
    tok = tmp_path / "tok"
    train_bpe_tokenizer([VERDICT.read_text()], vocab_size=400).save_pretrained(tok)
    before = snapshot(tok)
    with pytest.raises(OutputDirNotEmptyError, match="tokenizer.json"):
        load_recipe("pretrain").main(["--tokenizer_name", "gpt2", "--output_dir", str(tok)])
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(gpt2)
    assert convert_cli.main(["--model_name_or_path", str(gpt2), "--tokenizer", "gpt2", "--output_dir", str(tok)]) == 1
    assert snapshot(tok) == before
    assert len(load_tokenizer(str(tok), trust_remote_code=False)) == 400


@needs_verdict
def test_resuming_another_runs_checkpoint_does_not_replace_a_finished_model(tmp_path, bpe_dir):
    recipe = load_recipe("pretrain")
    recipe.main(pretrain_args(bpe_dir, tmp_path / "a", "--save_strategy", "steps", "--save_steps", 2))
    finished = tmp_path / "b"
    recipe.main(pretrain_args(bpe_dir, finished))
    before = snapshot(finished)
    with pytest.raises(OutputDirNotEmptyError, match="is not one of its checkpoints"):
        recipe.main(pretrain_args(bpe_dir, finished, "--max_steps", 4,
                                  "--resume_from_checkpoint", tmp_path / "a" / "checkpoint-2"))
    assert snapshot(finished) == before


def _fail_halfway(original):
    """A `safetensors.torch.save_file` that runs out of disk space halfway through the file."""

    def save_file(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    return save_file


@needs_verdict
def test_a_full_disk_during_the_final_save_keeps_the_old_model(tmp_path, bpe_dir, monkeypatch):
    import transformers.modeling_utils

    recipe = load_recipe("pretrain")
    out = tmp_path / "run"
    recipe.main(pretrain_args(bpe_dir, out))
    old = AutoModelForCausalLM.from_pretrained(out)
    model_files = {name: (out / name).read_bytes() for name in ("config.json", "model.safetensors", "tokenizer.json")}
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _fail_halfway(transformers.modeling_utils.safe_save_file))
    with pytest.raises(OSError, match="No space left on device"):
        recipe.main(pretrain_args(bpe_dir, out, "--overwrite_output_dir", "--config_overrides", "n_layers=1,emb_dim=16,n_heads=2,context_length=64"))
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in model_files} == model_files
    assert not (out / ".saving").exists()
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.config.n_layers == 2
    for (name, a), b in zip(old.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_final_save_replaces_a_model_as_one_set(tmp_path, monkeypatch):
    """An old sharded model, its slow-tokenizer files, an old adapter config: all go when the new
    model is in place; a user's file and the run's checkpoints stay. A failing save changes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({"w": torch.ones(2)}, str(out / name))
    for name in ("model.safetensors.index.json", "vocab.json", "merges.txt", "adapter_config.json"):
        (out / name).write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "checkpoint-3").mkdir()
    model = hf_gpt_scratch.GPTScratchForCausalLM(tiny_config())
    tokenizer = train_bpe_tokenizer(["a few words of text, and a few more words"], vocab_size=270)

    import transformers.modeling_utils

    before = snapshot(out)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _fail_halfway(None))
    with pytest.raises(OSError):
        save_pretrained_to(out, model, tokenizer)
    monkeypatch.undo()
    assert snapshot(out) == before

    save_pretrained_to(out, model, tokenizer)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-3", "config.json", "configuration_gpt_scratch.py", "generation_config.json",
                     "loss_gpt_scratch.py", "model.safetensors", "modeling_gpt_scratch.py", "notes.txt",
                     "tokenizer.json", "tokenizer_config.json"]
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.model.tok_emb.weight, model.model.tok_emb.weight)


@needs_verdict
def test_overwrite_leaves_no_old_checkpoint_adapter_or_result(tmp_path, bpe_dir):
    recipe = load_recipe("pretrain")
    out = tmp_path / "run"
    recipe.main(pretrain_args(bpe_dir, out, "--max_steps", 4, "--save_strategy", "steps", "--save_steps", 2))
    adapter = out / "adapter"  # an old LoRA run's adapter
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    save_file({"w": torch.ones(2)}, str(adapter / "adapter_model.safetensors"))
    (out / "responses.json").write_text("[]")
    assert resolve_resume_checkpoint("last", str(out)).endswith("checkpoint-4")

    second = recipe.main(pretrain_args(bpe_dir, out, "--overwrite_output_dir", "--seed", 3))
    assert not list(out.glob("checkpoint-*")) and not adapter.exists() and not (out / "responses.json").exists()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint.*--save_strategy steps --save_steps N"):
        resolve_resume_checkpoint("last", str(out))
    assert json.loads((out / "all_results.json").read_text())["train_steps"] == second["train_steps"] == 2
    assert not any(name.startswith("adapter") for name in pushed_files(out))

    # convert --overwrite into a run's folder: the run's results are not the converted model's
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(gpt2)
    assert convert_cli.main(["--model_name_or_path", str(gpt2), "--output_dir", str(out), "--overwrite"]) == 0
    assert not (out / "all_results.json").exists() and not (out / "training_args.json").exists()
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 97


SMS = [("ok see you at home later", "ham"), ("are you coming to the party tonight", "ham"),
       ("call me when you get this", "ham"), ("i will be late for dinner sorry", "ham")] * 6


def test_one_class_data_is_refused_before_training(tmp_path):
    import csv

    path = tmp_path / "train.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *SMS])
    out = tmp_path / "out"
    before = _finished(out)
    with pytest.raises(ValueError, match=re.escape(f"{path}: the training data has only the class(es) ['ham']")):
        load_recipe("classify").main([
            "--train_file", str(path), "--class_names", "ham", "spam",
            "--config_overrides", "n_layers=1,emb_dim=16,n_heads=2,context_length=32", "--max_steps", "1",
            "--disable_tqdm", "true", "--output_dir", str(out), "--overwrite_output_dir"])
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# 2. Every trust decision is explicit
# --------------------------------------------------------------------------------------------


def _code_marker(folder, module, marker, body):
    """`folder/module.py`, which writes `marker` when imported (i.e. when the code is run)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n{body}")


def _remote_code_tokenizer(folder, marker):
    train_bpe_tokenizer(["some text to learn a few merges from"] * 5, vocab_size=270).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    _code_marker(folder, "tokenization_evil", marker, "from transformers import PreTrainedTokenizerFast\n"
                 "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return folder


def _remote_code_model(folder, marker):
    _code_marker(folder, "configuration_evil", marker, "from transformers import PretrainedConfig\n"
                 "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_gpt'\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil_gpt", "auto_map": {
        "AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    return folder


@pytest.fixture
def terminal_answering_yes(monkeypatch):
    """stdin is a pseudo-terminal on which the user has typed 'y': transformers' "Do you wish to
    run the custom code? [y/N]" prompt, if shown, would read it and run the code."""
    master, slave = os.openpty()
    os.write(master, b"y\ny\ny\n")
    stdin = open(slave, "r", closefd=True)
    assert stdin.isatty()
    monkeypatch.setattr(sys, "stdin", stdin)
    yield
    stdin.close()
    os.close(master)


def test_no_custom_code_prompt_in_a_terminal(tmp_path, terminal_answering_yes, capsys):
    marker = tmp_path / "code_ran"
    tokenizer = _remote_code_tokenizer(tmp_path / "tok", marker)
    model = _remote_code_model(tmp_path / "model", marker)
    # a recipe's tokenizer (every recipe loads it with loading.load_tokenizer_for) ...
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_recipe("pretrain").main(["--tokenizer_name", str(tokenizer), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_tokenizer_for(ModelArguments(model_name_or_path=str(tokenizer)))
    # ... and convert's loads, of a model and of a tokenizer
    assert convert_cli.main(["--model_name_or_path", str(model), "--output_dir", str(tmp_path / "c1")]) == 1
    assert convert_cli.main(["--book_checkpoint", str(tmp_path / "none.pth"), "--book_config", "gpt2-small (124M)",
                         "--tokenizer", str(tokenizer), "--output_dir", str(tmp_path / "c2")]) == 1
    captured = capsys.readouterr()
    assert "Do you wish to run the custom code" not in captured.out + captured.err
    assert "trust_remote_code" in captured.err
    assert not marker.exists()
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c2").exists()


def test_the_flag_runs_the_code(tmp_path):
    marker = tmp_path / "code_ran"
    folder = _remote_code_tokenizer(tmp_path / "tok", marker)
    tokenizer = load_tokenizer_for(ModelArguments(tokenizer_name=str(folder), trust_remote_code=True))
    assert type(tokenizer).__name__ == "EvilTokenizer" and marker.exists()


def _calls_without_trust(path):
    """Lines of `from_pretrained`/`from_config` calls and `Auto*` uses in `path` that neither pass
    `trust_remote_code=` nor forward `**kwargs` (PEFT's loaders run no checkpoint code)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = ast.unparse(node.func.value)
        if node.func.attr in ("from_pretrained", "from_config") and not owner.startswith("Peft"):
            if not any(k.arg in ("trust_remote_code", None) for k in node.keywords):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return bad


# Files whose loads are not checked yet (none: keep it empty).
PENDING = set()


def test_every_load_passes_trust_remote_code_explicitly():
    files = sorted([*RECIPES.glob("*.py"), *(REPO / "hf_gpt_scratch").glob("*.py")])
    bad = [line for path in files if str(path.relative_to(REPO)) not in PENDING for line in _calls_without_trust(path)]
    assert bad == []


def _gpt2_folder(folder, vocab_size=97):
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=8, n_layer=2, n_head=2)).save_pretrained(folder)
    return folder


def test_convert_refuses_a_gpt2_folder_missing_weights(tmp_path, capsys):
    src = _gpt2_folder(tmp_path / "gpt2")
    weights = load_file(str(src / "model.safetensors"))
    del weights["transformer.h.1.mlp.c_fc.weight"], weights["transformer.h.1.ln_2.bias"]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert convert_cli.main(["--model_name_or_path", str(src), "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "missing from the checkpoint" in err and "transformer.h.1.*" in err and str(src) in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# 3. Damaged or foreign checkpoints are named
# --------------------------------------------------------------------------------------------


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, n=64, length=16, vocab=97):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _trainer(tmp_path, callbacks=(), config=None, **kwargs):
    model = hf_gpt_scratch.GPTScratchForCausalLM(config or tiny_config())
    settings = dict(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=3, save_strategy="steps", save_steps=2, report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_pin_memory=False,
    )
    args = TrainingArguments(**{**settings, **kwargs})
    return Trainer(model=model, args=args, train_dataset=_Blocks(), data_collator=default_data_collator,
                   callbacks=list(callbacks)), model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """checkpoint-2, -4 and -6 of a tiny run."""
    out = tmp_path_factory.mktemp("run")
    _trainer(out, max_steps=6)[0].train()
    return out


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_damaged_checkpoints_are_named_and_skipped(tmp_path, checkpoints, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(checkpoints, out)
    _truncate(out / "checkpoint-6" / "model.safetensors")
    _truncate(out / "checkpoint-4" / "optimizer.pt")
    (out / "checkpoint-8").mkdir()  # a run killed while saving: no trainer_state.json
    (out / "checkpoint-8" / "model.safetensors").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_checkpoint("last", str(out)) == str(out / "checkpoint-2")
    assert f"Skipping checkpoint {out / 'checkpoint-8'}: it has no readable trainer_state.json" in caplog.text
    assert f"Skipping checkpoint {out / 'checkpoint-6'}: model.safetensors is damaged" in caplog.text
    assert f"Skipping checkpoint {out / 'checkpoint-4'}: optimizer.pt is damaged" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-6: model.safetensors is damaged"):
        resolve_resume_checkpoint(str(out / "checkpoint-6"), None)
    with pytest.raises(ValueError, match=r"checkpoint-4: optimizer.pt is damaged"):
        resolve_resume_checkpoint(str(out / "checkpoint-4"), str(out))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_resume_checkpoint(str(out / "nope"), None)
    assert resolve_resume_checkpoint(None, str(out)) is None and resolve_resume_checkpoint("false", str(out)) is None


@pytest.mark.parametrize("other", [{"n_layers": 3}, {"vocab_size": 90}], ids=["architecture", "tokenizer"])
@pytest.mark.parametrize("with_optimizer", [True, False])
def test_a_foreign_checkpoint_is_refused_before_training(tmp_path, checkpoints, other, with_optimizer):
    import shutil

    ckpt = tmp_path / "checkpoint-4"
    shutil.copytree(checkpoints / "checkpoint-4", ckpt)
    if not with_optimizer:  # the Trainer would load it non-strictly and train a random layer
        (ckpt / "optimizer.pt").unlink()
    trainer, model = _trainer(tmp_path / "out", config=tiny_config(**other), resume_from_checkpoint=str(ckpt))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        train_model(trainer)
    message = str(info.value)
    assert f"--resume_from_checkpoint {ckpt}" in message and "nothing was trained" in message
    if "n_layers" in other:
        assert "missing from the checkpoint (they would be randomly initialised): model.trf_blocks.2.*" in message
    else:
        assert "model.tok_emb.weight (checkpoint (97, 32), model (90, 32))" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_checkpoint_without_optimizer_state_resumes_with_a_warning(tmp_path, checkpoints, caplog):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(checkpoints, out)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (out / "checkpoint-6" / name).unlink()
    trainer, _ = _trainer(out, max_steps=8, resume_from_checkpoint="last")
    with caplog.at_level(logging.WARNING):
        train_model(trainer)
    assert f"--resume_from_checkpoint {out / 'checkpoint-6'} has no optimizer.pt, scheduler.pt, rng_state.pth" in caplog.text
    assert trainer.state.global_step == 8


def test_a_model_folder_without_tokenizer_files(tmp_path, caplog):
    """Not silently GPT-2's BPE with 49,857 random embedding rows: refused unless the model has
    GPT-2's vocabulary size, then with a warning."""
    small = tmp_path / "small"
    hf_gpt_scratch.GPTScratchForCausalLM(tiny_config(vocab_size=400)).save_pretrained(small)
    with pytest.raises(ValueError, match=r"small has no tokenizer files .* says 400 tokens.*--tokenizer_name"):
        load_tokenizer_for(ModelArguments(model_name_or_path=str(small)))
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_recipe("pretrain").main(["--model_name_or_path", str(small), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    gpt2_sized = _gpt2_folder(tmp_path / "gpt2", vocab_size=50257)
    with pytest.raises(ValueError, match="holds no tokenizer"):  # transformers 5 would build an empty one
        load_tokenizer(str(gpt2_sized), trust_remote_code=False)
    with caplog.at_level(logging.WARNING):
        tokenizer = load_tokenizer_for(ModelArguments(model_name_or_path=str(gpt2_sized)))
    assert len(tokenizer) == 50257 and "has no tokenizer files: using OpenAI's GPT-2 BPE" in caplog.text
    gpt2_tokenizer().save_pretrained(small)  # a tokenizer there wins; an explicit --tokenizer_name wins over it
    assert len(load_tokenizer_for(ModelArguments(model_name_or_path=str(small)))) == 50257
    train_bpe_tokenizer(["a few words of text"] * 3, vocab_size=260).save_pretrained(tmp_path / "tok")
    args = ModelArguments(model_name_or_path=str(small), tokenizer_name=str(tmp_path / "tok"))
    assert len(load_tokenizer_for(args)) < 300


# --------------------------------------------------------------------------------------------
# 5. NaN / infinite loss; SIGKILL, then --resume_from_checkpoint last
# --------------------------------------------------------------------------------------------


def _poison(model, at_call):
    """Make the loss of forward call number `at_call` (1-based) NaN: a stand-in for a batch that
    overflows in mixed precision."""
    original = model.forward
    calls = {"n": 0}

    @functools.wraps(original)
    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call and out.loss is not None:
            out.loss = out.loss * float("nan")
        return out

    model.forward = forward


def test_nan_loss_stops_before_the_step_is_saved(tmp_path):
    trainer, model = _trainer(tmp_path, default_callbacks())
    assert trainer.args.logging_nan_inf_filter is False  # the guard turns off the filter that hides NaN
    _poison(model, at_call=5)  # step 5: neither logs (3, 6, 9) nor saves (2, 4, 6, ...)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    # found at the next step that logs or saves, before it does
    assert "step 6 of 10: the weights are no longer finite" in message
    assert "they were finite at step 4" in message
    last = str(tmp_path / "checkpoint-4")
    assert f"The last good checkpoint is {last}" in message and f"--resume_from_checkpoint {last}" in message
    # the good checkpoints are there, complete and finite; nothing after the NaN was written
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path) == last
    weights = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    # the loss log shows the steps before, not a NaN hidden as a finite number
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [3]


def test_every_step_names_the_step_it_broke_at(tmp_path):
    trainer, model = _trainer(tmp_path, [NonFiniteLossGuard(every_step=True)])
    _poison(model, at_call=5)
    with pytest.raises(NonFiniteLossError, match=r"step 5 of 10: the weights are no longer finite"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_nan_in_the_logged_loss_alone_also_stops(tmp_path):
    """Without the weight check, the logged loss is checked (on_log runs before the save)."""
    trainer, model = _trainer(tmp_path, [NonFiniteLossGuard(check_weights=False)], logging_steps=2)
    _poison(model, at_call=4)
    with pytest.raises(NonFiniteLossError, match=r"step 4 of 10: the training loss is nan"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def pretrain_cmd(bpe_dir, out, *extra):
    args = [
        "--tokenizer_name", bpe_dir, "--config_overrides", TINY, "--block_size", 32, "--max_steps", 12,
        "--per_device_train_batch_size", 4, "--learning_rate", 5e-3, "--logging_steps", 2, "--eval_steps", 4,
        "--max_eval_samples", 8, "--save_strategy", "steps", "--save_steps", 2, "--disable_tqdm", "true",
        "--max_new_tokens", 2, "--output_dir", out, *extra,
    ]
    return [sys.executable, str(PRETRAIN), *map(str, args)]


@pytest.mark.slow
@needs_verdict
def test_huge_learning_rate_stops_the_recipe_clearly(tmp_path, bpe_dir):
    """A real overflow: with lr 1e37 the first AdamW step moves weights to ~1e37 (finite, saved as
    checkpoint-1); the next forward overflows, the loss and the weights turn NaN."""
    out = tmp_path / "nan"
    cmd = pretrain_cmd(bpe_dir, out, "--learning_rate", "1e37", "--save_steps", 1, "--logging_steps", 1,
                       "--eval_strategy", "no", "--eval_on_start", "false", "--max_steps", 6)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=recipe_env(), cwd=REPO, timeout=300)
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("hf_gpt_scratch.training.faults.NonFiniteLossError: Training stopped at step 2 of 6")
    assert f"The last good checkpoint is {out / 'checkpoint-1'}" in last_line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]  # no broken checkpoint, no final model
    weights = load_file(str(out / "checkpoint-1" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def _points(out):
    """The loss log: every logged training loss, gradient norm, learning rate and evaluation loss."""
    keys = ("step", "loss", "grad_norm", "learning_rate", "eval_loss", "num_input_tokens_seen")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: e[k] for k in keys if k in e} for e in history if "loss" in e or "eval_loss" in e]


@pytest.mark.slow
@needs_verdict
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, bpe_dir):
    full = tmp_path / "full"
    subprocess.run(pretrain_cmd(bpe_dir, full), check=True, capture_output=True, env=recipe_env(), cwd=REPO, timeout=300)

    out = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cmd(bpe_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=recipe_env(), cwd=REPO)
    second = out / "checkpoint-4" / "trainer_state.json"  # the Trainer's last write to a checkpoint
    deadline = time.monotonic() + 240
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    finished = (out / "all_results.json").exists() or (out / "model.safetensors").exists()
    assert not finished, "the run finished first"
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps[:2] == [2, 4] and steps[-1] < 12
    # a checkpoint half-written when the process died (weights, no trainer_state.json) is skipped
    partial = out / f"checkpoint-{steps[-1] + 2}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")

    # an interrupted run is never overwritten by accident: without --resume the recipe refuses
    with pytest.raises(OutputDirNotEmptyError, match="--resume_from_checkpoint last"):
        check_output_dir(out)

    resumed = subprocess.run(pretrain_cmd(bpe_dir, out, "--resume_from_checkpoint", "last"), capture_output=True,
                             text=True, env=recipe_env(), cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"Skipping checkpoint {partial}: it has no readable trainer_state.json" in resumed.stdout + resumed.stderr

    # the same weights, bit for bit, and the same loss log, point for point
    a, b = load_file(str(full / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _points(out) == _points(full)
    assert [p["step"] for p in _points(full) if "loss" in p] == [2, 4, 6, 8, 10, 12]
    results = json.loads((out / "all_results.json").read_text())
    full_results = json.loads((full / "all_results.json").read_text())
    assert results["train_steps"] == 12 and results["eval_loss"] == full_results["eval_loss"]

    # safetensors only: no pickle in the model folders, except the Trainer's own resume files
    # (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin) inside checkpoint-N
    assert pickle_files(full) == []
    assert "training_args.bin" not in os.listdir(full) and (full / "training_args.json").is_file()
    assert sorted(pickle_files(full / "checkpoint-12", allow_trainer_checkpoints=False)) == [
        "optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"]


def test_a_lora_checkpoint_resumes(tmp_path):
    """The Trainer saves a PEFT model's adapter only: the check compares it with the adapter."""
    from peft import LoraConfig, get_peft_model

    def lora_trainer(**kwargs):
        trainer, model = _trainer(tmp_path, **kwargs)
        trainer.model = get_peft_model(model, LoraConfig(r=2, target_modules=["W_query", "W_value"]))
        return Trainer(model=trainer.model, args=trainer.args, train_dataset=_Blocks(), data_collator=default_data_collator)

    lora_trainer(max_steps=2).train()
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = lora_trainer(max_steps=4, resume_from_checkpoint="last")
    train_model(resumed)
    assert resumed.state.global_step == 4

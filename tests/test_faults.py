"""Surviving faults (hf_gpt_scratch.faults and its use in the recipes): a run killed with SIGKILL
resumes to exactly the uninterrupted result, a NaN/infinite loss stops training before a
checkpoint of the broken step is written, and a finished model is never overwritten unless asked."""

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, default_data_collator

import hf_gpt_scratch
from hf_gpt_scratch.arguments import DataArguments, ModelArguments, parse_recipe_args
from hf_gpt_scratch.callbacks import default_callbacks
from hf_gpt_scratch.faults import (
    NonFiniteLossError,
    NonFiniteLossGuard,
    OutputDirNotEmptyError,
    check_output_dir,
    last_complete_checkpoint,
    pickle_files,
)

from conftest import RECIPES, REPO, load_recipe, needs_verdict, recipe_env, tiny_config

PRETRAIN = RECIPES / "pretrain.py"
# dropout on: resuming must also restore the RNG state (the Trainer's rng_state.pth)
TINY = "n_layers=2,emb_dim=32,n_heads=2,context_length=64,drop_rate=0.1"


@pytest.fixture(scope="module")
def bpe_dir(verdict_bpe_dir):
    return verdict_bpe_dir


def pretrain_cmd(bpe_dir, out, *extra):
    args = [
        "--tokenizer_name", bpe_dir, "--config_overrides", TINY, "--block_size", 32, "--max_steps", 12,
        "--per_device_train_batch_size", 4, "--learning_rate", 5e-3, "--logging_steps", 2, "--eval_steps", 4,
        "--max_eval_samples", 8, "--save_strategy", "steps", "--save_steps", 2, "--disable_tqdm", "true",
        "--max_new_tokens", 2, "--output_dir", out, *extra,
    ]
    return [sys.executable, str(PRETRAIN), *map(str, args)]


def _points(out):
    """The loss log: every logged training loss, gradient norm, learning rate and evaluation loss."""
    keys = ("step", "loss", "grad_norm", "learning_rate", "eval_loss", "num_input_tokens_seen")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [{k: e[k] for k in keys if k in e} for e in history if "loss" in e or "eval_loss" in e]


# --------------------------------------------------------------------------------------------
# SIGKILL, then --resume_from_checkpoint
# --------------------------------------------------------------------------------------------


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
    assert not (out / "results.json").exists() and not (out / "model.safetensors").exists(), "the run finished first"
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
    assert f"Skipping incomplete checkpoint(s) {partial}" in resumed.stdout + resumed.stderr

    # the same weights, bit for bit, and the same loss log, point for point
    a, b = load_file(str(full / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _points(out) == _points(full)
    assert [p["step"] for p in _points(full) if "loss" in p] == [2, 4, 6, 8, 10, 12]
    results = json.loads((out / "results.json").read_text())
    assert results["train_steps"] == 12 and results["eval_loss"] == json.loads((full / "results.json").read_text())["eval_loss"]

    # safetensors only: no pickle in the model folders, except the Trainer's own resume files
    # (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin) inside checkpoint-N
    assert pickle_files(full) == []
    assert "training_args.bin" not in os.listdir(full) and (full / "training_args.json").is_file()
    assert sorted(pickle_files(full / "checkpoint-12", allow_trainer_checkpoints=False)) == [
        "optimizer.pt", "rng_state.pth", "scheduler.pt", "training_args.bin"]


# --------------------------------------------------------------------------------------------
# NaN / infinite loss
# --------------------------------------------------------------------------------------------


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, n=64, length=16, vocab=97):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


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


def _trainer(tmp_path, callbacks, **kwargs):
    model = hf_gpt_scratch.GPTScratchForCausalLM(tiny_config())
    settings = dict(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=3, save_strategy="steps", save_steps=2, report_to="none", disable_tqdm=True,
        use_cpu=True, dataloader_pin_memory=False,
    )
    args = TrainingArguments(**{**settings, **kwargs})
    return Trainer(model=model, args=args, train_dataset=_Blocks(), data_collator=default_data_collator,
                   callbacks=callbacks), model


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
    assert last_line.startswith("hf_gpt_scratch.faults.NonFiniteLossError: Training stopped at step 2 of 6")
    assert f"The last good checkpoint is {out / 'checkpoint-1'}" in last_line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]  # no broken checkpoint, no final model
    weights = load_file(str(out / "checkpoint-1" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


# --------------------------------------------------------------------------------------------
# Finished models are not overwritten unless asked
# --------------------------------------------------------------------------------------------


TYPES = (ModelArguments, DataArguments, TrainingArguments)


def _finished(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("results.json", "{}")):
        (folder / name).write_text(text)
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


def test_finished_model_is_refused_before_any_work(tmp_path):
    before = _finished(tmp_path / "out")
    with pytest.raises(OutputDirNotEmptyError) as info:
        parse_recipe_args(TYPES, args=["--output_dir", str(tmp_path / "out")])
    message = str(info.value)
    assert str(tmp_path / "out") in message and "--overwrite_output_dir" in message
    assert "config.json" in message and "model.safetensors" in message
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "out").iterdir()} == before


def test_overwrite_and_resume_are_allowed(tmp_path):
    out = tmp_path / "out"
    _finished(out)
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--overwrite_output_dir"])
    assert training_args.overwrite_output_dir is True
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--overwrite_output_dir", "false"],
                                             check_output=False)
    assert training_args.overwrite_output_dir is False
    (out / "checkpoint-3").mkdir()
    *_, training_args, _ = parse_recipe_args(TYPES, args=["--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert training_args.resume_from_checkpoint == "last"
    # a JSON file of flags takes the flag too
    flags = tmp_path / "flags.json"
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
    base = ["--tokenizer_name", str(bpe_dir), "--config_overrides", TINY, "--block_size", "32", "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--eval_on_start", "false",
            "--logging_steps", "1", "--disable_tqdm", "true", "--max_new_tokens", "2", "--output_dir", str(out)]
    first = recipe.main(base)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputDirNotEmptyError, match="--overwrite_output_dir"):
        recipe.main([*base, "--seed", "7"])
    assert (out / "model.safetensors").read_bytes() == weights
    second = recipe.main([*base, "--seed", "7", "--overwrite_output_dir"])
    assert (out / "model.safetensors").read_bytes() != weights  # another seed, another model
    assert json.loads((out / "results.json").read_text())["train_loss"] == pytest.approx(second["train_loss"])
    assert math.isfinite(first["train_loss"])

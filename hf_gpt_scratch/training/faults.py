"""Faults the recipes survive, none of them silently: a NaN loss, a run killed while saving, a damaged
checkpoint, a model or a user's file in the output folder, over-long examples, tokens and pickles."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from safetensors import safe_open
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import sort_checkpoints

from ..tokenization import TOKENIZER_SAVE_FILES

logger = logging.getLogger(__name__)

_NO = {"", "false", "no", "0", "off"}
_LAST = {"true", "last", "latest"}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights); raised by `NonFiniteLossGuard`."""


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters with a NaN or an infinity in this process's part of them. A tensor's
    `aminmax` is finite exactly when all its values are: on a CPU 10 times faster than `isfinite`."""
    names, extremes = [], []
    with torch.no_grad():
        for name, p in model.named_parameters():
            p = getattr(p, "ds_tensor", p)  # DeepSpeed ZeRO-3's shard: p.data is an empty placeholder
            p = p.to_local() if hasattr(p, "to_local") else p  # a torch DTensor's (FSDP2, tensor parallel)
            if p.numel():
                names.append(name)
                extremes.append(torch.stack(torch.aminmax(p.reshape(-1))).float())
        finite = torch.isfinite(torch.stack(extremes)).all(dim=1).tolist() if extremes else []
    return [name for name, ok in zip(names, finite) if not ok]


class NonFiniteLossGuard(TrainerCallback):
    """Stop at a NaN or infinite loss before a checkpoint holds it (the Trainer only hides it from its
    logs: `logging_nan_inf_filter`, turned off here). Checks each logged loss, and the weights at each
    step that logs, evaluates or saves, and the last (`every_step`: all). Raises `NonFiniteLossError`
    on every process at the same step, naming the step, what broke and the last good checkpoint."""

    def __init__(self, check_weights: bool = True, every_step: bool = False):
        self.check_weights = check_weights
        self.every_step = every_step
        self._last_finite_step = 0

    def on_init_end(self, args, state, control, **kwargs):
        args.logging_nan_inf_filter = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_finite_step = state.global_step

    def _fail(self, args, state, what: str) -> None:
        last = last_complete_checkpoint(args.output_dir) if args.output_dir else None
        keep = "No checkpoint was saved before it (keep some with --save_strategy steps --save_steps N)"
        if last:
            keep = f"The last good checkpoint is {last}: resume from it with --resume_from_checkpoint {last}"
        message = (f"Training stopped at step {state.global_step} of {state.max_steps}: {what}. {keep}, e.g. "
                   "with a lower --learning_rate or gradient clipping (--max_grad_norm).")
        raise NonFiniteLossError(message)

    def _check_weights(self, args, state, control, model, due: bool = False) -> None:
        due = due or control.should_log or control.should_evaluate or control.should_save
        if not (self.check_weights and model is not None and due):
            return
        bad = non_finite_parameters(model)
        # shards differ between processes: every process must stop at the same step
        if not reduce(torch.tensor(float(len(bad)), device=PartialState().device), "max").item():
            self._last_finite_step = state.global_step
            return
        detail = f"e.g. {', '.join(bad[:5])}" if bad else "in another process's shard"
        if self._last_finite_step < state.global_step - 1:
            detail += f"; they were finite at step {self._last_finite_step}"
        self._fail(args, state, "the weights are no longer finite after the optimizer step "
                   f"(a NaN or infinite loss or gradient) ({detail})")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # DefaultFlowCallback (always first) has decided by now whether this step logs/evaluates/saves.
        last = control.should_training_stop or state.global_step >= state.max_steps
        self._check_weights(args, state, control, model, self.every_step or last)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_weights(args, state, control, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                lr = logs.get("learning_rate")
                lr = f" (learning rate {lr:g})" if isinstance(lr, (int, float)) else ""
                self._fail(args, state, f"the training loss is {value}{lr}")


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from, or None. Cheap: reads trainer_state.json
    (the Trainer's last write), each safetensors header and each torch.save file's zip directory."""
    folder = Path(path)
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return f"it has no readable {TRAINER_STATE_NAME} (the run stopped while saving it)"
    for file in sorted(folder.iterdir()):
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), "pt"):
                    pass
            except Exception as err:  # SafetensorError: truncated, or not safetensors at all
                return f"{file.name} is damaged ({err})"
        elif file.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(file):
            return f"{file.name} is damaged (not a complete torch.save file)"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N of `output_dir` without a `checkpoint_problem` (newer: a warning), or None."""
    for path in reversed(sort_checkpoints(str(output_dir)) if Path(output_dir).is_dir() else []):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping checkpoint %s: %s.", path, problem)
    return None


def resolve_resume_checkpoint(value: str | None, output_dir: str | None) -> str | None:
    """--resume_from_checkpoint: 'true', 'last' or 'latest' is the newest complete checkpoint in
    `output_dir`, a path must be a complete checkpoint; None, '' or 'false' is None.
    FileNotFoundError when there is none, ValueError naming a damaged file."""
    if value is None or str(value).lower() in _NO:
        return None
    if str(value).lower() in _LAST:
        last = last_complete_checkpoint(output_dir) if output_dir else None
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in "
                                    f"{output_dir}. The recipes save checkpoints only when asked: "
                                    "--save_strategy steps --save_steps N.")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}. Resume from an earlier checkpoint, or pass "
                         "the folder as --model_name_or_path to start a new run from its weights.")
    return str(value)


# What the recipes, the Trainer and convert write into an output folder: without --overwrite_output_dir
# a folder holding any of it, a pickle or an adapter folder is refused; with it, RUN_STATE goes before
# training (`remove_previous_run`) and MODEL_FILES are replaced as one set by the final save.
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "adapter_config.json", *TOKENIZER_SAVE_FILES)
RUN_STATE = ("checkpoint-*", "*_results.json", "samples.json", "responses*.json", TRAINER_STATE_NAME,
             "training_args.*", "loss.png", "accuracy.png", "confusion_matrix.png", "reward_margins.png")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
STAGE = ".saving"  # `staged_save`'s folder inside an output folder


class OutputDirNotEmptyError(FileExistsError):
    """--output_dir holds a model or training state and the user did not allow replacing it."""


def _entries(output_dir, patterns) -> list[Path]:
    folder = Path(output_dir)
    found = [p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)
             or (p.is_dir() and (p / "adapter_config.json").is_file())] if folder.is_dir() else []
    return sorted(found)


def check_output_dir(output_dir: str | Path | None, overwrite: bool = False, resume: Any = None,
                     flag: str = "--overwrite_output_dir") -> None:
    """`OutputDirNotEmptyError` (naming the folder, what is in it and the flags) when `output_dir` holds
    a model, a tokenizer, checkpoints, results or a pickle, unless `overwrite` (the `flag`) or `resume`
    continues the run there (--resume_from_checkpoint 'last' or one of its checkpoint-N folders)."""
    patterns = (*MODEL_FILES, *RUN_STATE, *(f"*{suffix}" for suffix in PICKLE_SUFFIXES))
    found = [p.name + "/" * p.is_dir() for p in _entries(output_dir, patterns)] if output_dir else []
    if not found:
        return
    if overwrite:
        logger.warning("%s: the run in %s (%s) is replaced: its checkpoints, adapters and results are removed "
                       "before training, its model by the final save.", flag, output_dir, ", ".join(found[:8]))
        return
    resume = "" if resume is None or str(resume).lower() in _NO else str(resume)
    if resume.lower() in _LAST or (resume and Path(resume).resolve().parent == Path(output_dir).resolve()):
        return
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    hint = ""
    if resume:
        hint = (f" --resume_from_checkpoint {resume} is not one of its checkpoints: the resumed run would be "
                "written over it.")
    elif any(name.startswith("checkpoint-") for name in found):
        hint = " To continue the run that left these checkpoints, pass --resume_from_checkpoint last."
    raise OutputDirNotEmptyError(
        f"--output_dir {output_dir} already holds a model, a tokenizer or training state ({shown}). Refusing to overwrite "
        f"it: pass {flag} to replace it, or choose another --output_dir.{hint}"
    )


def remove_previous_run(output_dir: str | Path) -> None:
    """Delete an earlier run's RUN_STATE from `output_dir`; its model stays until the final save."""
    removed = _entries(output_dir, RUN_STATE)
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        logger.warning("Removed the previous run's %s from %s.", ", ".join(p.name for p in removed), output_dir)


@contextlib.contextmanager
def staged_save(folder: str | Path):
    """Yield `folder/.saving` to save into; when the block succeeds, its files move into `folder`
    (`os.replace` needs no space) and `folder`'s other MODEL_FILES go: the new model replaces the
    old as one set. When it fails (a full disk), `folder` is left as it was."""
    folder = Path(folder)
    stage = folder / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        yield stage
        written = {p.name for p in stage.iterdir()}
        for path in stage.iterdir():
            if path.is_dir() and (folder / path.name).is_dir():
                shutil.rmtree(folder / path.name)
            os.replace(path, folder / path.name)
        for old in folder.iterdir():
            if old.is_file() and old.name not in written and any(fnmatch.fnmatch(old.name, p) for p in MODEL_FILES):
                old.unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_pretrained_to(folder: str | Path, *objects) -> None:
    """`save_pretrained` of each of `objects` (a model, its tokenizer) into `folder`, as one set (`staged_save`)."""
    with staged_save(folder) as stage:
        for obj in objects:
            obj.save_pretrained(stage)


class ExampleTooLongError(ValueError):
    """An example is longer than the model's context and the recipe refuses to truncate it."""


def check_sequence_lengths(lengths: Iterable[int], limit: int, *, source: str, policy: str = "truncate",
                           what: str = "example", hint: str = "") -> int:
    """The number of examples longer than `limit` tokens (`lengths[i]`: example i's), named with `source`,
    the first row and the longest in a warning (policy "truncate") or an `ExampleTooLongError` ("refuse")."""
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return 0
    (first, first_len), longest = too_long[0], max(n for _, n in too_long)
    hint = f" {hint}" if hint else ""
    message = (f"{source}: {len(too_long)} {what}(s) are longer than {limit} tokens; the first is row "
               f"{first} ({first_len} tokens), the longest {longest} tokens")
    if policy == "refuse":
        raise ExampleTooLongError(f"{message}.{hint}")
    logger.warning("%s: they are truncated.%s", message, hint)
    return len(too_long)


def check_lengths(splits: dict, tokenizer, limit: int, source: str, completions: Sequence[str] = ()) -> None:
    """`check_sequence_lengths` of each split (None skipped): its texts (column "text"), or its prompt +
    each of `completions` + eos as TRL tokenizes them, truncated; a prompt that alone fills `limit`
    refused (`ExampleTooLongError`: TRL would drop it silently)."""
    from trl.data_utils import common_prefix_length

    eos = tokenizer.eos_token or ""
    for split, ds in splits.items():
        where = f"{source} ({split} split)"
        if ds is None:
            continue
        if not completions:
            ids = tokenizer(list(ds["text"]), add_special_tokens=False, verbose=False)["input_ids"]
            hint = "Raise --max_seq_length (up to the model's context) to keep more of them."
            check_sequence_lengths(map(len, ids), limit, source=where, what="text", hint=hint)
        else:
            prompts = tokenizer(list(ds["prompt"]), verbose=False)["input_ids"]
            full = [tokenizer([p + t + eos * (not t.endswith(eos)) for p, t in zip(ds["prompt"], ds[c])],
                              verbose=False)["input_ids"] for c in completions]
            lengths = (max(len(ids[i]) for ids in full) for i in range(len(prompts)))
            hint = "Raise --max_length (up to the model's context) to keep the end of their responses."
            check_sequence_lengths(lengths, limit, source=where, what="entry", hint=hint)
            hint = ("Each needs room for at least one response token: shorten those entries, drop them, or "
                    "raise --max_length (up to the model's context).")
            starts = (min(common_prefix_length(p, ids[i]) for ids in full) for i, p in enumerate(prompts))
            check_sequence_lengths(starts, limit - 1, source=where, policy="refuse", what="prompt", hint=hint)


def refuse_hub_token(training_args) -> None:
    """Refuse `--hub_token`: the Trainer pickles its arguments into every checkpoint (and a flag sits
    in the shell history); huggingface_hub reads `hf auth login`'s token or HF_TOKEN itself."""
    if getattr(training_args, "hub_token", None):
        raise ValueError(
            "--hub_token is not accepted: a token given as a flag ends up in logs and in the saved training "
            "arguments. Log in once with `hf auth login` (or set HF_TOKEN in the environment) instead."
        )

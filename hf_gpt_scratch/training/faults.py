"""Faults the recipes survive, none of them silently: a NaN loss, a run killed while saving, a
damaged checkpoint, a finished model or a user's file in the output folder, over-long examples,
tokens and pickles. The recipes get all of it from `arguments.parse_recipe_args`,
`callbacks.default_callbacks` and `loading.train_model` / `loading.save_final_model`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from transformers import TrainerCallback
from transformers.trainer_utils import sort_checkpoints

from ..tokenization import TOKENIZER_SAVE_FILES

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_NO = {"", "false", "no", "0", "off"}

# ---- Non-finite losses. Ours because the Trainer only hides a NaN loss from its logs
# (`logging_nan_inf_filter`) and goes on training and saving the broken weights.


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights); raised by `NonFiniteLossGuard`."""


def _local_tensor(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds (FSDP2 DTensor shard, DeepSpeed ZeRO-3 shard)."""
    if hasattr(p, "ds_tensor"):  # DeepSpeed ZeRO-3: p.data is an empty placeholder
        return p.ds_tensor
    return p.to_local() if hasattr(p, "to_local") else p  # torch DTensor (FSDP2, tensor parallel)


def non_finite_parameters(model: torch.nn.Module, limit: int = 5) -> list[str]:
    """Names of (at most `limit`) parameters holding a NaN or an infinity in this process's shards."""
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(_local_tensor(p)).all())]
    return bad[:limit]


def _all_finite(model: torch.nn.Module) -> bool:
    """True when every parameter is finite on every process (one all-reduce when sharded). Each
    tensor's `aminmax` (NaN propagates) is finite exactly when all its values are: on a CPU about
    10 times faster than `isfinite().all()`."""
    params = list(model.parameters())
    with torch.no_grad():
        extremes = [torch.stack(torch.aminmax(t.reshape(-1))).float() for t in map(_local_tensor, params) if t.numel()]
        ok = bool(torch.isfinite(torch.cat(extremes)).all()) if extremes else True
    sharded = any(hasattr(p, "ds_tensor") or hasattr(p, "to_local") for p in params)
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        # shards differ between processes: every process must stop at the same step
        nccl = torch.distributed.get_backend() == "nccl"  # NCCL reduces GPU tensors only
        bad = torch.tensor([float(not ok)], device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        ok = not bool(bad.item())
    return ok


class NonFiniteLossGuard(TrainerCallback):
    """Stop training at a NaN or infinite loss before anything of the broken model is written.

    `on_step_end`, `on_log` and `on_epoch_end` run before the Trainer saves a step. Checked there:
    the weights (a NaN loss or gradient turns them NaN in the same step) on every step that logs,
    evaluates or saves and on the last one (`every_step=True`: after every optimizer step, naming
    the very step), and every logged training loss (the Trainer's `logging_nan_inf_filter`, which
    would hide it, is turned off). A failure raises `NonFiniteLossError` on every process at the
    same step, naming the step, what broke and the last good checkpoint to resume from, so no
    checkpoint and no final model holds a NaN.
    """

    def __init__(self, check_weights: bool = True, every_step: bool = False):
        self.check_weights = check_weights
        self.every_step = every_step
        self._last_finite_step: int | None = None

    def on_init_end(self, args, state, control, **kwargs):
        args.logging_nan_inf_filter = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_finite_step = state.global_step

    def _fail(self, args, state, what: str, detail: str = "") -> None:
        last, step = last_complete_checkpoint(args.output_dir) if args.output_dir else None, state.global_step
        fix = "a lower --learning_rate or gradient clipping (--max_grad_norm)"
        keep = (f"The last good checkpoint is {last} (nothing was saved for step {step}); resume from it with "
                f"--resume_from_checkpoint {last}, e.g. with {fix}." if last else
                f"No checkpoint was saved before step {step} (keep some with --save_strategy steps --save_steps N); try {fix}.")
        message = (f"Training stopped at step {state.global_step} of {state.max_steps}: {what}"
                   + (f" ({detail})" if detail else "") + f". {keep}")
        logger.error(message)
        raise NonFiniteLossError(message)

    def _check_weights(self, args, state, model) -> None:
        if not self.check_weights or model is None:
            return
        if _all_finite(model):
            self._last_finite_step = state.global_step
            return
        names = non_finite_parameters(model)
        detail = ("e.g. " + ", ".join(names)) if names else "in another process's shard"
        if self._last_finite_step is not None and self._last_finite_step < state.global_step - 1:
            detail += f"; they were finite at step {self._last_finite_step}"
        self._fail(args, state, "the weights are no longer finite after the optimizer step "
                   "(a NaN or infinite loss or gradient)", detail)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # DefaultFlowCallback (always first) has decided by now whether this step logs/evaluates/saves.
        due = (control.should_log or control.should_evaluate or control.should_save
               or control.should_training_stop or state.global_step >= state.max_steps)
        if self.every_step or due:
            self._check_weights(args, state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save:
            self._check_weights(args, state, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                lr = logs.get("learning_rate")
                self._fail(args, state, f"the training loss is {value}",
                           f"learning rate {lr:g}" if isinstance(lr, (int, float)) else "")


# ---- Checkpoints


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the Trainer's checkpoint folder `path` cannot be resumed from, or None. Cheap: parses
    trainer_state.json (the Trainer's last write, missing when a run died while saving), opens
    each safetensors header (a truncated file fails) and each torch.save file's zip directory."""
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
    """The newest checkpoint-N folder of `output_dir` without a `checkpoint_problem`, or None;
    newer folders are skipped with a warning naming their problem."""
    for path in reversed(sort_checkpoints(str(output_dir)) if Path(output_dir).is_dir() else []):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping checkpoint %s: %s.", path, problem)
    return None


def resolve_resume_checkpoint(value: str | None, output_dir: str | None) -> str | None:
    """--resume_from_checkpoint: 'true', 'last' or 'latest' is the newest complete checkpoint in
    `output_dir` (`last_complete_checkpoint`), a path must be a complete checkpoint; None, '' or
    'false' is None. FileNotFoundError when there is none, ValueError naming a damaged file."""
    if value is None or str(value).lower() in _NO:
        return None
    if str(value).lower() in {"true", "last", "latest"}:
        last = last_complete_checkpoint(output_dir) if output_dir else None
        if last is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in {output_dir}. "
                                    "The recipes save checkpoints only when asked: --save_strategy steps --save_steps N.")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such folder.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}. Resume from an earlier checkpoint, or pass "
                         "the folder as --model_name_or_path to start a new run from its weights.")
    return str(value)


# ---- Output folders

# What the recipes, the Trainer and convert write into an output folder. A folder holding any of
# it (or a pickle, or a folder with adapter_config.json) is refused without --overwrite_output_dir.
# With it, RUN_STATE goes before training (no old checkpoint is resumed, no old adapter or result
# pushed) and MODEL_FILES are replaced as one set by the final save (`staged_save`).
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "adapter_config.json", *TOKENIZER_SAVE_FILES)
RUN_STATE = ("checkpoint-*", "results.json", "responses*.json", TRAINER_STATE_NAME, "training_args.*",
             "loss.png", "accuracy.png", "confusion_matrix.png", "reward_margins.png")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class OutputDirNotEmptyError(FileExistsError):
    """--output_dir holds a model or training state and the user did not allow replacing it."""


def _entries(output_dir, patterns) -> list[Path]:
    """Entries of `output_dir` matching `patterns`, plus adapter folders (holding adapter_config.json)."""
    folder = Path(output_dir)
    found = [p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)
             or (p.is_dir() and (p / "adapter_config.json").is_file())] if folder.is_dir() else []
    return sorted(found)


def output_dir_contents(output_dir: str | Path) -> list[str]:
    """Names in `output_dir` that belong to a model, a tokenizer or a training run (sorted), [] if none."""
    found = _entries(output_dir, (*MODEL_FILES, *RUN_STATE, *(f"*{suffix}" for suffix in PICKLE_SUFFIXES)))
    return [p.name + "/" * p.is_dir() for p in found]


def check_output_dir(output_dir: str | Path | None, overwrite: bool = False, resume: Any = None,
                     flag: str = "--overwrite_output_dir") -> None:
    """Refuse, before any work, to write into `output_dir` when it holds a model, a tokenizer,
    checkpoints or results (`output_dir_contents`), unless `overwrite` (the `flag`) or `resume`
    continues the run that is there (--resume_from_checkpoint 'last' or one of its checkpoint-N
    folders). Raises `OutputDirNotEmptyError` naming the folder, what is in it and the flags."""
    found = output_dir_contents(output_dir) if output_dir else []
    if not found:
        return
    if overwrite:
        logger.warning("%s: the run in %s (%s) is replaced: its checkpoints, adapters and results are removed "
                       "before training, its model by the final save.", flag, output_dir, ", ".join(found[:8]))
        return
    resume = None if resume is None or str(resume).lower() in _NO else str(resume)
    if resume is not None and (resume.lower() in {"true", "last", "latest"}
                               or Path(resume).resolve().parent == Path(output_dir).resolve()):
        return
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    hint = ""
    if resume is not None:
        hint = (f" --resume_from_checkpoint {resume} is not one of its checkpoints: the resumed run would be "
                "written over it.")
    elif any(name.startswith("checkpoint-") for name in found):
        hint = " To continue the run that left these checkpoints, pass --resume_from_checkpoint last."
    raise OutputDirNotEmptyError(
        f"--output_dir {output_dir} already holds a model, a tokenizer or training state ({shown}). Refusing to overwrite "
        f"it: pass {flag} to replace it, or choose another --output_dir.{hint}"
    )


def remove_previous_run(output_dir: str | Path) -> list[str]:
    """Delete an earlier run's RUN_STATE from `output_dir` (checkpoints, adapters, results) and
    return the names; its model files stay until the final save replaces them."""
    removed = _entries(output_dir, RUN_STATE)
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        logger.warning("Removed the previous run's %s from %s.", ", ".join(p.name for p in removed), output_dir)
    return [p.name for p in removed]


STAGE = ".saving"


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


# ---- Lengths


class ExampleTooLongError(ValueError):
    """An example is longer than the model's context and the recipe refuses to truncate it."""


def check_sequence_lengths(lengths: Iterable[int], limit: int, *, source: str, policy: str = "truncate",
                           what: str = "example", hint: str = "") -> int:
    """The number of examples longer than `limit` tokens (`lengths[i]`: example i's); policy
    "truncate" logs one warning with the count, the first row and the longest (the caller
    truncates), "refuse" raises `ExampleTooLongError` naming `source`, the first row and the limit."""
    if policy not in ("truncate", "refuse"):
        raise ValueError(f"policy must be 'truncate' or 'refuse', got {policy!r}")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return 0
    (first, first_len), longest = too_long[0], max(n for _, n in too_long)
    hint = f" {hint}" if hint else ""
    if policy == "refuse":
        raise ExampleTooLongError(
            f"{source}: {len(too_long)} {what}(s) are longer than {limit} tokens; the first is row {first} "
            f"({first_len} tokens), the longest {longest} tokens.{hint}"
        )
    logger.warning("%s: truncating %d %s(s) longer than %d tokens (first: row %d with %d tokens; longest %d).%s",
                   source, len(too_long), what, limit, first, first_len, longest, hint)
    return len(too_long)


def report_truncated_texts(splits, tokenizer, limit: int, source: str, column: str = "text") -> dict[str, int]:
    """Count (one warning per split of `splits`, a DatasetDict with a `column` of texts) the
    classification texts longer than `limit` tokens, which are truncated (the book's choice: a
    message's class is usually clear from its start). Returns {split: count}."""
    counts = {}
    for split, ds in splits.items():
        ids = tokenizer(list(ds[column]), add_special_tokens=False, verbose=False)["input_ids"]
        counts[split] = check_sequence_lengths(
            (len(row) for row in ids), limit, source=f"{source} ({split} split)", what="text",
            hint="Raise --max_seq_length (up to the model's context) to keep more of them.",
        )
    return counts


def check_instruction_lengths(splits: dict, tokenizer, max_length: int, source: str,
                              completions: tuple[str, ...] = ("completion",)) -> dict[str, int]:
    """Instruction examples (TRL prompt/completion or prompt/chosen/rejected datasets: the
    `completions` columns; None skipped), prompt + completion tokenized as one text, against the
    `max_length` TRL truncates to: longer examples are truncated as the book's collator does (one
    warning per split with the count); an example whose prompt alone fills `max_length` is an
    `ExampleTooLongError` (no response token would be left to learn from; TRL's SFT and DPO trainers
    would drop it silently). Returns {split: truncated}."""
    from trl.data_utils import common_prefix_length

    counts = {}
    for split, ds in splits.items():
        if ds is None:
            continue
        where = f"{source} ({split} split)"
        prompts = tokenizer(list(ds["prompt"]), verbose=False)["input_ids"]
        full = {c: tokenizer([p + t for p, t in zip(ds["prompt"], ds[c])], verbose=False)["input_ids"] for c in completions}
        counts[split] = check_sequence_lengths(
            (max(len(full[c][i]) for c in completions) for i in range(len(prompts))), max_length, source=where,
            what="entry", hint="The end of their responses is cut; raise --max_length (up to the model's context) to keep it.",
        )
        check_sequence_lengths(
            (common_prefix_length(p, f) for p, f in zip(prompts, full[completions[0]])), max_length - 1, source=where,
            policy="refuse", what="prompt",
            hint="Each needs room for at least one response token: shorten those entries, drop them, or raise "
            "--max_length (up to the model's context).",
        )
    return counts


# ---- Tokens and pickles


def refuse_hub_token(training_args) -> None:
    """Refuse `--hub_token`: the Trainer pickles its arguments into every checkpoint's
    training_args.bin (and a flag sits in the shell history). Tokens come from `hf auth login` or
    HF_TOKEN, which huggingface_hub reads itself."""
    if getattr(training_args, "hub_token", None):
        raise ValueError(
            "--hub_token is not accepted: a token given as a flag ends up in logs and in the saved training "
            "arguments. Log in once with `hf auth login` (or set HF_TOKEN in the environment) instead."
        )


# The Trainer's own resume files inside checkpoint-N folders (torch.save pickles).
TRAINER_CHECKPOINT_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin)$")


def pickle_files(folder: str | Path, allow_trainer_checkpoints: bool = True) -> list[str]:
    """Pickle-format files (by suffix) under `folder`, relative paths, sorted. With
    `allow_trainer_checkpoints`, the Trainer's resume files inside checkpoint-N folders (and
    DeepSpeed's states in checkpoint-N/global_stepN/) are left out."""
    root, found = Path(folder), []
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in PICKLE_SUFFIXES:
            continue
        rel = path.relative_to(root)
        in_checkpoint = any(re.fullmatch(r"checkpoint-\d+", part) for part in rel.parts[:-1])
        deepspeed_state = any(part.startswith("global_step") for part in rel.parts[:-1])
        if allow_trainer_checkpoints and in_checkpoint and (TRAINER_CHECKPOINT_PICKLES.match(path.name) or deepspeed_state):
            continue
        found.append(str(rel))
    return sorted(found)


def replace_pickled_training_args(output_dir: str | Path, training_args) -> Path | None:
    """Replace the Trainer's pickled training_args.bin in `output_dir` by training_args.json
    (tokens redacted by `TrainingArguments.to_json_string`). Returns its path, or None."""
    pickled = Path(output_dir) / "training_args.bin"
    if not pickled.is_file():
        return None
    path = pickled.with_suffix(".json")
    path.write_text(training_args.to_json_string())
    pickled.unlink()
    return path


__all__ = [
    "NonFiniteLossError", "NonFiniteLossGuard", "non_finite_parameters",
    "checkpoint_problem", "last_complete_checkpoint", "resolve_resume_checkpoint",
    "MODEL_FILES", "RUN_STATE", "OutputDirNotEmptyError", "output_dir_contents", "check_output_dir",
    "remove_previous_run", "staged_save", "save_pretrained_to", "ExampleTooLongError", "check_sequence_lengths", "report_truncated_texts",
    "check_instruction_lengths", "refuse_hub_token", "pickle_files", "replace_pickled_training_args",
]

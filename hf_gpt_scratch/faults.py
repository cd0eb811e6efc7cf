"""Surviving faults in the training recipes: non-finite losses, interrupted runs, finished models
in the way, over-long examples, pickles and hub tokens.

Everything here reaches the recipes through the shared helpers (`arguments.parse_recipe_args`,
`callbacks.default_callbacks`, `arguments.resolve_resume_checkpoint`, `loading.save_final_model`);
a recipe needs no code of its own for it.

- `NonFiniteLossGuard` (a `TrainerCallback`, in `default_callbacks()`): stops training with a
  `NonFiniteLossError` naming the step when the weights or the logged training loss are no longer
  finite, *before* the Trainer logs, evaluates or saves a checkpoint of that step, so the last
  checkpoint on disk is the last good one and no broken final model is written.
- `last_complete_checkpoint`: the newest `checkpoint-N` whose `trainer_state.json` (the Trainer's
  last write) is there, so a run killed while saving resumes from the checkpoint before.
- `check_output_dir`: refuses to train into a folder that holds a model or training state unless
  the user said `--overwrite_output_dir` or `--resume_from_checkpoint`.
- `check_sequence_lengths`: a counted warning (or an error naming the first row) for examples
  longer than the context; `report_truncated_texts` (classification texts) and
  `check_instruction_lengths` (instruction examples) apply it per split.
- `refuse_hub_token`: a `--hub_token` flag is refused (it would be pickled into every
  checkpoint's training_args.bin); tokens come from `hf auth login` or HF_TOKEN.
- `replace_pickled_training_args`, `pickle_files`: the final model folder holds no pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"


# --------------------------------------------------------------------------------------------
# Non-finite losses
# --------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights); raised by `NonFiniteLossGuard`."""


def _local_tensor(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds (FSDP2 DTensor shard, DeepSpeed ZeRO-3 shard)."""
    if hasattr(p, "ds_tensor"):  # DeepSpeed ZeRO-3: p.data is an empty placeholder
        return p.ds_tensor
    if hasattr(p, "to_local"):  # torch DTensor (FSDP2, tensor parallel)
        return p.to_local()
    return p


def _is_sharded(params: Sequence[torch.Tensor]) -> bool:
    return any(hasattr(p, "ds_tensor") or hasattr(p, "to_local") for p in params)


def non_finite_parameters(model: torch.nn.Module, limit: int = 5) -> list[str]:
    """Names of (at most `limit`) parameters of `model` holding a NaN or an infinity, looking only
    at this process's shards."""
    bad = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = _local_tensor(p)
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad.append(name)
                if len(bad) >= limit:
                    break
    return bad


def _all_finite(model: torch.nn.Module) -> bool:
    """True when every parameter of `model` is finite, on every process (one synchronisation).

    Each tensor's minimum and maximum (`torch.aminmax`, which propagates NaN) are finite exactly
    when all its values are; on a CPU that is about 10 times faster than `isfinite().all()`."""
    params = [p for p in model.parameters()]
    if not params:
        return True
    with torch.no_grad():
        extremes = []
        for p in params:
            local = _local_tensor(p)
            if local.numel():
                low, high = torch.aminmax(local.reshape(-1))
                extremes += [low.float(), high.float()]
        ok = torch.isfinite(torch.stack(extremes)).all() if extremes else torch.tensor(True)
        if _is_sharded(params) and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Shards differ between processes: every process must stop at the same step.
            if torch.distributed.get_backend() == "nccl":  # NCCL reduces GPU tensors only
                device = torch.device("cuda", torch.cuda.current_device())
            else:
                device = torch.device("cpu")
            bad = (~ok).to(device=device, dtype=torch.float32).reshape(1)
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            return not bool(bad.item())
        return bool(ok)


class NonFiniteLossGuard(TrainerCallback):
    """Stop training at a NaN or infinite loss before anything of the broken model is written.

    Two checks, both before the Trainer logs, evaluates or saves a step (`on_step_end` and
    `on_log` run before `_save_checkpoint` in the Trainer's loop, `on_epoch_end` before the
    end-of-epoch save):

    - the weights must be finite (a NaN/inf loss or gradient turns them NaN in the same step). They
      are checked on every step that logs, evaluates or saves, and on the last step, so no
      checkpoint and no final model holds a NaN; with `every_step=True` after every optimizer step,
      which names the very step it broke at. One min/max pass over this process's parameters
      (sharded runs agree on the result with one all-reduce): nothing on a GPU, but on a busy CPU
      it can cost a sizeable part of a small step, hence not every step by default;
    - every logged training loss (`on_log`) must be finite. The Trainer's `logging_nan_inf_filter`
      (on by default) silently replaces a non-finite step loss with the running average (a NaN
      step shows as a finite loss, or 0.0), so the guard turns it off: the loss curve shows the NaN.

    On a failure it raises `NonFiniteLossError` naming the step, what was non-finite, the last step
    whose weights were checked finite, and the last complete checkpoint in `output_dir` (to resume
    from, e.g. with a lower learning rate). Raising (rather than `control.should_training_stop`)
    keeps the recipe from saving the broken model as its final one; every process raises at the
    same step, so none waits forever.
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
        last = last_complete_checkpoint(args.output_dir) if args.output_dir else None
        if last is not None:
            keep = (
                f"The last good checkpoint is {last} (nothing was saved for step {state.global_step}); resume "
                f"from it with --resume_from_checkpoint {last}, e.g. with a lower --learning_rate or "
                f"gradient clipping (--max_grad_norm)."
            )
        else:
            keep = (
                f"No checkpoint was saved before step {state.global_step} (keep some with --save_strategy steps "
                f"--save_steps N); try a lower --learning_rate or gradient clipping (--max_grad_norm)."
            )
        message = (
            f"Training stopped at step {state.global_step} of {state.max_steps}: {what}"
            + (f" ({detail})" if detail else "")
            + f". {keep}"
        )
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
        if not logs:
            return
        for key in ("loss", "train_loss"):
            value = logs.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                lr = logs.get("learning_rate")
                detail = f"learning rate {lr:g}" if isinstance(lr, (int, float)) else ""
                self._fail(args, state, f"the training loss is {value}", detail)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when the Trainer finished writing checkpoint folder `path`: its trainer_state.json
    (written after the model, optimizer, scheduler and RNG states) is there and parses."""
    state = Path(path) / TRAINER_STATE_NAME
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """checkpoint-N folders of `output_dir`, oldest (smallest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint-N folder in `output_dir` (see `is_complete_checkpoint`), or
    None. Newer incomplete folders (a run killed while saving) are skipped with a warning."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            if skipped:
                logger.warning(
                    "Skipping incomplete checkpoint(s) %s (no %s: the run stopped while saving); using %s.",
                    ", ".join(skipped), TRAINER_STATE_NAME, path,
                )
            return str(path)
        skipped.append(str(path))
    return None


# --------------------------------------------------------------------------------------------
# Output directory
# --------------------------------------------------------------------------------------------

# What recipes and the Trainer write: a folder holding any of these has a model or training state.
_MODEL_FILES = (
    "config.json", "adapter_config.json", "results.json", TRAINER_STATE_NAME, "training_args.bin",
    "training_args.json", "generation_config.json",
)
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class OutputDirNotEmptyError(FileExistsError):
    """--output_dir holds a model or training state and the user did not allow replacing it."""


def output_dir_contents(output_dir: str | os.PathLike) -> list[str]:
    """Names in `output_dir` that belong to a model or a training run (sorted), [] if none."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.is_dir():
            if checkpoint_step(entry) is not None or (entry / "adapter_config.json").is_file():
                found.append(entry.name + "/")
        elif entry.name in _MODEL_FILES or entry.suffix in _MODEL_SUFFIXES:
            found.append(entry.name)
    return sorted(found)


def check_output_dir(output_dir: str | os.PathLike | None, overwrite: bool = False, resume: Any = None) -> None:
    """Refuse to train into `output_dir` when it holds a model, checkpoints or results.

    Allowed: a missing or empty folder, a folder with only other files (data, notes), any folder
    with `overwrite=True` (--overwrite_output_dir; files are replaced as they are written, nothing
    is deleted up front) or when resuming (`resume`: --resume_from_checkpoint). Otherwise raises
    `OutputDirNotEmptyError` naming the folder, what is in it and both flags, before any work.
    """
    if output_dir is None:
        return
    found = output_dir_contents(output_dir)
    if not found:
        return
    if overwrite:
        logger.warning("--overwrite_output_dir: writing over %s (holds %s).", output_dir, ", ".join(found[:8]))
        return
    if resume not in (None, "", False) and str(resume).lower() not in {"false", "no", "0", "off"}:
        return
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    hint = ""
    if any(name.startswith("checkpoint-") for name in found):
        hint = " To continue the run that left these checkpoints, pass --resume_from_checkpoint last."
    raise OutputDirNotEmptyError(
        f"--output_dir {output_dir} already holds a model or training state ({shown}). Refusing to overwrite "
        f"it: pass --overwrite_output_dir to replace it, or choose another --output_dir.{hint}"
    )


# --------------------------------------------------------------------------------------------
# Lengths
# --------------------------------------------------------------------------------------------


class ExampleTooLongError(ValueError):
    """An example is longer than the model's context and the recipe refuses to truncate it."""


def check_sequence_lengths(
    lengths: Iterable[int],
    limit: int,
    *,
    source: str,
    policy: str = "truncate",
    what: str = "example",
    hint: str = "",
) -> int:
    """Count the examples longer than `limit` tokens (`lengths[i]` is example i's length).

    policy "truncate": log one warning with the count, the longest length and the first row, and
    return the count (the caller truncates). policy "refuse": raise `ExampleTooLongError` naming
    `source`, the first row, its length and the limit. Returns 0 when everything fits.
    """
    if policy not in ("truncate", "refuse"):
        raise ValueError(f"policy must be 'truncate' or 'refuse', got {policy!r}")
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return 0
    first, first_len = too_long[0]
    longest = max(n for _, n in too_long)
    if policy == "refuse":
        raise ExampleTooLongError(
            f"{source}: {len(too_long)} {what}(s) are longer than {limit} tokens; the first is row {first} "
            f"({first_len} tokens), the longest {longest} tokens.{(' ' + hint) if hint else ''}"
        )
    logger.warning(
        "%s: truncating %d %s(s) longer than %d tokens (first: row %d with %d tokens; longest %d).%s",
        source, len(too_long), what, limit, first, first_len, longest, (" " + hint) if hint else "",
    )
    return len(too_long)


# --------------------------------------------------------------------------------------------
# Tokens and pickles
# --------------------------------------------------------------------------------------------


def refuse_hub_token(training_args) -> None:
    """Refuse `--hub_token`: the Trainer pickles its arguments into training_args.bin in every
    checkpoint (and the token would sit in the shell history and the process list). Tokens come
    from `hf auth login` or the HF_TOKEN environment variable, which huggingface_hub reads itself.
    Applied to every recipe at parse time, and by `hub.prepare_push`."""
    if getattr(training_args, "hub_token", None):
        raise ValueError(
            "--hub_token is not accepted: a token given as a flag ends up in logs and in the saved training "
            "arguments. Log in once with `hf auth login` (or set HF_TOKEN in the environment) instead."
        )


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The Trainer's own resume files inside checkpoint-N folders (torch.save pickles).
TRAINER_CHECKPOINT_PICKLES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin)$")


def pickle_files(folder: str | os.PathLike, allow_trainer_checkpoints: bool = True) -> list[str]:
    """Pickle-format files (by suffix) under `folder`, relative paths, sorted. With
    `allow_trainer_checkpoints`, the Trainer's optimizer/scheduler/RNG/arguments files inside
    checkpoint-N folders (and DeepSpeed's states in checkpoint-N/global_stepN/) are not listed:
    the Trainer needs them to resume."""
    root = Path(folder)
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix not in PICKLE_SUFFIXES:
            continue
        rel = path.relative_to(root)
        in_checkpoint = any(checkpoint_step(part) is not None for part in rel.parts[:-1])
        deepspeed_state = any(part.startswith("global_step") for part in rel.parts[:-1])  # DeepSpeed's own states
        if allow_trainer_checkpoints and in_checkpoint and (TRAINER_CHECKPOINT_PICKLES.match(path.name) or deepspeed_state):
            continue
        found.append(str(rel))
    return sorted(found)


def replace_pickled_training_args(output_dir: str | os.PathLike, training_args) -> Path | None:
    """Replace the Trainer's training_args.bin (a pickle, written by `Trainer.save_model`) in
    `output_dir` with training_args.json (tokens redacted by `TrainingArguments.to_json_string`).
    Returns the JSON path, or None when there was no training_args.bin."""
    folder = Path(output_dir)
    pickled = folder / "training_args.bin"
    if not pickled.is_file():
        return None
    path = folder / "training_args.json"
    path.write_text(training_args.to_json_string())
    pickled.unlink()
    return path


def report_truncated_texts(splits, tokenizer, limit: int, source: str, column: str = "text") -> dict[str, int]:
    """Classification texts longer than `limit` tokens are truncated (the book's choice, kept by
    recipes/classify.py: a message's class is usually clear from its start, and refusing would make
    a data set with a few long texts unusable); this counts them per split of `splits` (a
    DatasetDict with a `column` of texts) and logs one warning per split naming the count, the
    first row and the longest length (`faults.check_sequence_lengths`). Returns {split: count}."""
    counts = {}
    for split, ds in splits.items():
        ids = tokenizer(list(ds[column]), add_special_tokens=False, verbose=False)["input_ids"]
        counts[split] = check_sequence_lengths(
            (len(row) for row in ids), limit, source=f"{source} ({split} split)", what="text",
            hint="Raise --max_seq_length (up to the model's context) to keep more of them.",
        )
    return counts


def check_instruction_lengths(splits: dict, max_length: int, source: str) -> dict[str, int]:
    """Instruction examples (features of `data.tokenize_instruction`: `input_ids` without the
    end-of-text token the collator appends, `prompt_length`) against the `max_length` the
    collator truncates to.

    - An example whose prompt alone fills `max_length` is refused (`faults.ExampleTooLongError`
      naming the split and entry): no response token would be left to learn from, and with
      --mask_prompt a batch of them has no target at all (a 0/0 loss).
    - Longer examples are truncated, as the book's collator does (`allowed_max_length`): the end
      of the response and its end-of-text token are cut. One warning per split gives the count.

    `splits` maps split names to datasets (None entries are skipped). Returns {split: truncated}."""
    counts = {}
    for split, ds in splits.items():
        if ds is None:
            continue
        where = f"{source} ({split} split)"
        counts[split] = check_sequence_lengths(
            (len(ids) + 1 for ids in ds["input_ids"]), max_length, source=where, what="entry",
            hint="The end of their responses is cut; raise --max_seq_length (up to the model's context) to keep it.",
        )
        check_sequence_lengths(
            ds["prompt_length"], max_length - 1, source=where, policy="refuse", what="prompt",
            hint="Each needs room for at least one response token: shorten those entries, drop them, or raise "
            "--max_seq_length (up to the model's context).",
        )
    return counts



__all__ = [
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "non_finite_parameters",
    "checkpoint_step",
    "is_complete_checkpoint",
    "list_checkpoints",
    "last_complete_checkpoint",
    "OutputDirNotEmptyError",
    "output_dir_contents",
    "check_output_dir",
    "ExampleTooLongError",
    "check_sequence_lengths",
    "report_truncated_texts",
    "check_instruction_lengths",
    "refuse_hub_token",
    "pickle_files",
    "replace_pickled_training_args",
]

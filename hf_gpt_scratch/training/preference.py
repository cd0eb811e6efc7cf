"""DPO (the book's chapter 7 bonus, `dpo-from-scratch.ipynb`) for `recipes/preference.py` on TRL's
`DPOTrainer`: flags beside `DPOConfig`, the book's data checked and split, TRL's metrics renamed, curves."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from .instruction import InstructDataArguments, InstructEvalArguments
from .data import RESPONSE_HEADER, format_alpaca_prompt, load_instruction_data
from .reporting import log_history_to_curves

logger = logging.getLogger(__name__)

BOOK_FILE = "instruction-data-with-preference.json"
IDENTICAL_PAIRS = ("error", "drop", "keep")
# DPOTrainer logs its reward metrics as "eval_<name>" whatever the evaluation's metric_key_prefix.
_TRL_METRICS = {"reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracies",
                "chosen_reward": "rewards/chosen", "rejected_reward": "rewards/rejected"}
_CURVE_NAMES = {**{theirs: f"train_{ours}" for ours, theirs in _TRL_METRICS.items()},
                **{f"eval_{theirs}": f"eval_{ours}" for ours, theirs in _TRL_METRICS.items()}}


@dataclass
class PreferenceDataArguments(InstructDataArguments):
    identical_pairs: str | None = field(
        default=None,
        metadata={"help": "An entry whose chosen and rejected texts are the same teaches nothing (its DPO loss is "
                  "log 2 whatever the model): 'error' refuses the file naming the entries, 'drop' leaves them out, "
                  "'keep' trains on them. Default: 'error' for --train_file; the book's file, which has 6 (entries "
                  "122, 226, 400, 566, 628 and 676, all in the training split), keeps them as the book does."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.identical_pairs is not None and self.identical_pairs not in IDENTICAL_PAIRS:
            raise ValueError(f"--identical_pairs must be one of {', '.join(IDENTICAL_PAIRS)}, got {self.identical_pairs!r}.")

    def load_entries(self) -> list[dict]:
        return load_preference_data(self.train_file, self.data_dir, self.identical_pairs)


@dataclass
class PreferenceEvalArguments(InstructEvalArguments):
    num_samples: int = field(
        default=3, metadata={"help": "Test prompts answered greedily by the reference and the tuned model, side by side."}
    )
    eval_before: bool = field(
        default=True,
        metadata={"help": "Evaluate validation and test before training too (the policy is then the reference: "
                  "loss log 2 = 0.6931, margin 0, accuracy 0; a different value means the reference is wrong)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_samples < 0:
            raise ValueError(f"--num_samples must be >= 0, got {self.num_samples}.")


def load_preference_data(path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                         identical_pairs: str | None = None) -> list[dict]:
    """`data.load_instruction_data` of a file (default: the book's, 1,100 entries) of `{"instruction",
    "input"?, "chosen", "rejected"}`; `identical_pairs`: see --identical_pairs (equal up to surrounding
    whitespace). ValueError naming the file, the row (0-based) and the field."""
    book = path is None
    entries = load_instruction_data(path, data_dir, ("instruction", "chosen", "rejected"), BOOK_FILE)
    path = path or BOOK_FILE
    same = [i for i, e in enumerate(entries) if e["chosen"].strip() == e["rejected"].strip()]
    mode = identical_pairs or ("keep" if book else "error")
    if same and mode == "error":
        shown = ", ".join(map(str, same[:10])) + (f" and {len(same) - 10} more" if len(same) > 10 else "")
        raise ValueError(
            f"{path}: row {shown}: 'chosen' and 'rejected' are identical ({entries[same[0]]['chosen']!r}); such a "
            "pair teaches nothing (its DPO loss is log 2 whatever the model). Fix the file, or pass "
            "--identical_pairs drop (or keep)."
        )
    if same:
        logger.info("%s: %d entries with identical chosen and rejected texts (%s): %s.", path, len(same),
                    ", ".join(map(str, same)), "left out" if mode == "drop" else "kept")
    if mode == "drop":
        entries = [e for i, e in enumerate(entries) if i not in set(same)]
    return entries


def preference_dataset(entries: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """TRL's preference format: "prompt" is the book's Alpaca prompt, "chosen"/"rejected" are
    "\\n\\n### Response:\\n" + text, as in the book's `PreferenceDataset` (the newlines start the
    completion: GPT-2's BPE merges a trailing "\\n\\n" of a prompt into a token the full text lacks)."""
    return datasets.Dataset.from_dict({
        "prompt": [format_alpaca_prompt(e) for e in entries],
        "chosen": [RESPONSE_HEADER + e["chosen"] for e in entries],
        "rejected": [RESPONSE_HEADER + e["rejected"] for e in entries],
    })


def evaluate_preferences(trainer, splits: Mapping[str, datasets.Dataset | None]) -> dict[str, dict[str, float]]:
    """`{split: {"loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"}}` of TRL's
    `trainer.evaluate` (reward = beta * log-probability ratio of policy to reference; accuracy: the share of
    pairs with margin > 0), empty or None splits skipped. Call it on every process."""
    results = {}
    for name, dataset in splits.items():
        if dataset is None or len(dataset) == 0:
            continue
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=name)
        results[name] = {"loss": metrics[f"{name}_loss"],
                         **{ours: metrics[f"eval_{theirs}"] for ours, theirs in _TRL_METRICS.items()}}
    return results


def preference_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """`reporting.log_history_to_curves` of the training logs and periodic validations, TRL's reward
    metrics renamed for `plots.plot_losses` ("train_reward_margin", "eval_reward_accuracy", ...)."""
    rows = []
    for entry in log_history:
        if "loss" in entry or "eval_loss" in entry:  # not evaluate_preferences' rows (logged as "eval_*" too)
            rows.append({_CURVE_NAMES.get(key, key): value for key, value in entry.items()})
    return log_history_to_curves(rows)

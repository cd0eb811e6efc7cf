"""Preference tuning with DPO (the book's chapter 7 bonus, `dpo-from-scratch.ipynb`), used by
`recipes/preference.py` on TRL's `DPOTrainer`.

- `PreferenceDataArguments`, `PreferenceEvalArguments`: the recipe's flags
  beside TRL's `DPOConfig` (--beta, --loss_type, --max_length, ...).
- `load_preference_data`: a JSON list or JSONL file of {"instruction", "input"?, "chosen", "rejected"}
  entries (the book's instruction-data-with-preference.json by default), refused before any training
  when an entry lacks a field, has an empty one, or has the same chosen and rejected text.
- `preference_dataset`: the entries in TRL's prompt/chosen/rejected format with the book's Alpaca prompt.
- `load_preference_splits`: the book's 85/10/5 split (`data.split_instruction_data`).
- `evaluate_preferences`: DPO loss, reward margin and reward accuracy per split, read from
  `DPOTrainer.evaluate` (TRL computes them; this only names them).
- `preference_curves`: the log history as the series `plots.plot_losses` draws (losses, margins).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from .instruction_setup import InstructDataArguments
from .data import RESPONSE_HEADER, format_alpaca_prompt, load_instruction_data
from .reporting import log_history_to_curves

logger = logging.getLogger(__name__)

BOOK_FILE = "instruction-data-with-preference.json"
IDENTICAL_PAIRS = ("error", "drop", "keep")
# DPOTrainer logs its reward metrics as "eval_<name>" whatever the evaluation's metric_key_prefix.
_TRL_METRICS = {"reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracies",
                "chosen_reward": "rewards/chosen", "rejected_reward": "rewards/rejected"}


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


@dataclass
class PreferenceEvalArguments:
    num_samples: int = field(
        default=3, metadata={"help": "Test prompts answered greedily by the reference and the tuned model, side by side."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated response (the book: 256)."})
    response_header_in_prompt: bool = field(
        default=True,
        metadata={"help": "End the generation prompt with '### Response:' (false: the book's prompt, the model "
                  "writes the header itself)."},
    )
    eval_before: bool = field(
        default=True,
        metadata={"help": "Evaluate validation and test before training too (the policy is then the reference: "
                  "loss log 2 = 0.6931, margin 0, accuracy 0; a different value means the reference is wrong)."},
    )

    def __post_init__(self):
        if self.num_samples < 0:
            raise ValueError(f"--num_samples must be >= 0, got {self.num_samples}.")
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")


def load_preference_data(path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                         identical_pairs: str | None = None) -> list[dict]:
    """The entries of a JSON list (or JSONL file) of `{"instruction", "input"?, "chosen", "rejected"}`
    (other keys, such as the book's "output", are kept), validated: `instruction`, `chosen` and
    `rejected` non-empty strings, `input` a string. Without `path`, the book's
    instruction-data-with-preference.json (1,100 entries, `data.fetch_book_file`).

    `identical_pairs` ("error", "drop", "keep"; None: "keep" for the book's file, else "error")
    decides about entries whose chosen and rejected texts are equal (ignoring surrounding
    whitespace). Raises ValueError naming the file, the entry index (0-based) and the field."""
    book = path is None
    entries = load_instruction_data(path, data_dir, ("instruction", "chosen", "rejected"), BOOK_FILE)
    path = path or BOOK_FILE
    same = [i for i, e in enumerate(entries) if e["chosen"].strip() == e["rejected"].strip()]
    mode = identical_pairs or ("keep" if book else "error")
    if same and mode == "error":
        shown = ", ".join(map(str, same[:10])) + (f" and {len(same) - 10} more" if len(same) > 10 else "")
        raise ValueError(
            f"{path}: entry {shown}: 'chosen' and 'rejected' are identical ({entries[same[0]]['chosen']!r}); such a "
            "pair teaches nothing (its DPO loss is log 2 whatever the model). Fix the file, or pass "
            "--identical_pairs drop (or keep)."
        )
    if same:
        logger.info("%s: %d entries with identical chosen and rejected texts (%s): %s.", path, len(same),
                    ", ".join(map(str, same)), "left out" if mode == "drop" else "kept")
    if mode == "drop":
        entries = [e for i, e in enumerate(entries) if i not in set(same)]
    return entries


def load_preference_splits(data_args: PreferenceDataArguments) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test) entries: validated (a bad file fails here, before any model is
    loaded), split as the book does (85% / 5% / 10%, no shuffling: 935 / 55 / 110 of the book's
    1,100) and cut to the --max_*_samples."""
    return data_args.book_splits(load_preference_data(data_args.train_file, data_args.data_dir, data_args.identical_pairs))


def preference_dataset(entries: Sequence[Mapping[str, Any]]) -> datasets.Dataset:
    """TRL's standard preference format: "prompt" is the book's Alpaca prompt (`format_input`),
    "chosen"/"rejected" are "\\n\\n### Response:\\n" + text, as in the book's `PreferenceDataset`.
    The two newlines start the completion rather than end the prompt because GPT-2's BPE merges a
    trailing "\\n\\n" into one token that the full text does not have; they are the same tokens in
    the chosen and rejected sequences. TRL appends the eos token to both completions."""
    return datasets.Dataset.from_dict({
        "prompt": [format_alpaca_prompt(e) for e in entries],
        "chosen": [RESPONSE_HEADER + e["chosen"] for e in entries],
        "rejected": [RESPONSE_HEADER + e["rejected"] for e in entries],
    })


def evaluate_preferences(trainer, splits: Mapping[str, datasets.Dataset | None]) -> dict[str, dict[str, float]]:
    """`{split: {"loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"}}`
    of `trainer`'s policy against its reference, from `trainer.evaluate(eval_dataset=...)` (TRL's
    numbers: rewards are beta * (policy - reference) summed response log-probabilities, the margin
    chosen - rejected and the accuracy the share of pairs with margin > 0, averaged over
    evaluation batches). Empty or None splits are skipped. Call it on every process."""
    results = {}
    for name, dataset in splits.items():
        if dataset is None or len(dataset) == 0:
            continue
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=name)
        results[name] = {"loss": metrics[f"{name}_loss"],
                         **{ours: metrics[f"eval_{theirs}"] for ours, theirs in _TRL_METRICS.items()}}
    return results


def preference_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """The training logs and the periodic validation evaluations of `trainer.state.log_history` as
    `reporting.log_history_to_curves` series, TRL's reward metrics renamed for `plots.plot_losses`
    ("train_reward_margin", "eval_reward_margin", "..._reward_accuracy"). Evaluations with another
    metric_key_prefix (`evaluate_preferences`) are left out: TRL logs their rewards as "eval_*" too."""
    renamed = []
    for entry in log_history:
        if "eval_loss" not in entry and "loss" not in entry:
            continue
        row = {}
        for key, value in entry.items():
            prefix, bare = ("eval_", key[5:]) if key.startswith("eval_") else ("train_", key)
            ours = next((k for k, v in _TRL_METRICS.items() if v == bare), None)
            row[f"{prefix}{ours}" if ours else key] = value
        renamed.append(row)
    return log_history_to_curves(renamed)


__all__ = [
    "BOOK_FILE", "IDENTICAL_PAIRS", "PreferenceDataArguments", "PreferenceEvalArguments",
    "load_preference_data", "load_preference_splits", "preference_dataset",
    "evaluate_preferences", "preference_curves",
]

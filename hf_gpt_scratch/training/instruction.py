"""The book's chapter 7 for `recipes/instruct.py` (and `preference.py`): flags, the book's splits as TRL
prompt/completion data, evaluation (greedy responses, token-weighted response loss, ROUGE-L)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch

from .arguments import DataArguments
from .data import (ALPACA_HEADER, RESPONSE_HEADER, alpaca_prompt_completion, format_alpaca_prompt,
                   load_instruction_data, split_instruction_data)
from .sampling import context_length_of, generate_batched

logger = logging.getLogger(__name__)

RESPONSE_MARKER = RESPONSE_HEADER.strip()  # "### Response:"
# Generation stops at these strings (and at the eos token); the response is cut before them.
STOP_STRINGS = ("### Instruction",)
_CUT_AT = ("### Instruction", "### Input", RESPONSE_MARKER, ALPACA_HEADER.split(".")[0], "<|endoftext|>")


@dataclass
class InstructDataArguments(DataArguments):
    """Data flags of the chapter-7 recipes (instruct, preference): one Alpaca-format file, split as the book."""

    max_test_samples: int | None = field(
        default=None, metadata={"help": "Evaluate (and generate) on at most this many test entries."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._positive("max_test_samples")

    def load_entries(self) -> list[dict]:
        """The checked entries of --train_file (default: the book's instruction-data.json)."""
        return load_instruction_data(self.train_file, self.data_dir)

    def load_splits(self) -> tuple[list[dict], list[dict], list[dict]]:
        """(train, validation, test) of `load_entries` (a bad file fails before any model is loaded):
        the book's split (`data.split_instruction_data`, 935 / 55 / 110 of 1,100), each cut to its
        --max_*_samples. ValueError when no training entry is left."""
        entries = self.load_entries()
        train, validation, test = split_instruction_data(entries)
        train, validation, test = (split[:limit] if limit is not None else split for split, limit in (
            (train, self.max_train_samples), (validation, self.max_eval_samples), (test, self.max_test_samples)))
        if not train:
            raise ValueError(f"No training entries: {len(entries)} entries give an empty 85% train split.")
        return train, validation, test


@dataclass
class InstructEvalArguments:
    """The flags of the chapter-7 recipes' test evaluation (greedy responses, in batches of
    --per_device_eval_batch_size)."""

    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated response (the book: 256)."})
    response_header_in_prompt: bool = field(
        default=True,
        metadata={"help": "End the prompt with '### Response:' (false: the book's prompt, the model writes the "
                  "header itself)."},
    )
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the untuned model too (test split)."})

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")


def sft_dataset(entries: list[dict], eos_token: str) -> datasets.Dataset:
    """The entries as a TRL prompt/completion Dataset (`alpaca_prompt_completion`)."""
    return datasets.Dataset.from_list([alpaca_prompt_completion(entry, eos_token) for entry in entries])


def response_records(entries: list[dict], responses: list[str]) -> list[dict]:
    """The entries with their "model_response", the book's responses.json (what `examples/judge.py` scores)."""
    return [dict(entry, model_response=response) for entry, response in zip(entries, responses)]


def extract_response(generated: str, header_in_prompt: bool = True) -> str:
    """The response in `generated` (the new text only): what follows a leading "### Response:" (with
    `header_in_prompt=False`, the book's prompt, the first one anywhere, as the book's `.replace` does),
    cut before the next section the model starts (`_CUT_AT`) and stripped of surrounding whitespace."""
    text = generated.lstrip()
    if text.startswith(RESPONSE_MARKER):
        text = text[len(RESPONSE_MARKER):]
    elif not header_in_prompt and RESPONSE_MARKER in text:
        text = text.split(RESPONSE_MARKER, 1)[1]
    cut = min([i for i in (text.find(marker) for marker in _CUT_AT) if i != -1], default=len(text))
    return text[:cut].strip()


def generate_responses(model, tokenizer, entries: Sequence[Mapping[str, Any]], max_new_tokens: int = 256,
                       batch_size: int = 8, response_header: bool = True, progress: bool = False,
                       stop_strings: Sequence[str] | None = STOP_STRINGS) -> list[dict[str, str]]:
    """Greedy `[{"generated": raw new text, "response": extracted}]` for `entries` (`generate_batched`), up to
    eos or a stop string. A prompt that fills the context is cut from the left, with a warning naming the
    entry, to leave min(max_new_tokens, context // 4) new tokens."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    context = context_length_of(model)
    encoded = [tokenizer(format_alpaca_prompt(entry, response_header))["input_ids"] for entry in entries]
    for i, ids in enumerate(encoded):
        if context is not None and len(ids) >= context:
            keep = context - min(max_new_tokens, max(1, context // 4))
            logger.warning("Entry %d: its prompt has %d tokens, the model's context %d; generating from its last "
                           "%d tokens (the start of the prompt is cut).", i, len(ids), context, keep)
            encoded[i] = ids[-keep:]
    stop_strings = list(stop_strings) if stop_strings else None
    texts = generate_batched(model, tokenizer, encoded, max_new_tokens, batch_size, progress, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, stop_strings=stop_strings)
    return [{"generated": text, "response": extract_response(text, response_header)} for text in texts]


@torch.no_grad()
def response_loss(model, tokenizer, entries: Sequence[Mapping[str, Any]], batch_size: int = 8,
                  max_length: int | None = None) -> tuple[float, int]:
    """(summed loss, number of target tokens) over the response tokens of `entries` (as `SFTTrainer` tokenizes
    `alpaca_prompt_completion`, prompt masked), cut to `max_length` (default: the context). Kept: no library
    weighs the book's response loss by tokens across batches (so it does not depend on batch size)."""
    from trl.data_utils import common_prefix_length
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    max_length = max_length or context_length_of(model)
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    features = []
    for entry in entries:
        texts = alpaca_prompt_completion(entry, tokenizer.eos_token)
        ids = tokenizer(texts["prompt"] + texts["completion"])["input_ids"][:max_length]
        n = common_prefix_length(tokenizer(texts["prompt"])["input_ids"], ids)  # where TRL starts the completion
        features.append({"input_ids": ids, "labels": [-100] * n + ids[n:]})
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(features[start : start + batch_size])
            n = int((batch["labels"][:, 1:] != -100).sum())  # the model's loss is the mean over these
            if n:
                total += model(**{k: v.to(model.device) for k, v in batch.items()}).loss.item() * n
                count += n
    finally:
        model.train(was_training)
    return total, count


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0..1) of `predictions` against `references` (our offline `rouge`
    metric, no stemming). NaN for no pairs; ValueError when the counts differ."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return float("nan")
    from .metrics import load_metric

    scores = load_metric("rouge").compute(predictions=list(predictions), references=list(references),
                                          rouge_types=["rougeL"])
    return scores["rougeL"]


def evaluate_instruction_model(model, tokenizer, entries: Sequence[Mapping[str, Any]], batch_size: int = 8,
                               max_length: int | None = None, progress: bool = False,
                               **generate_kwargs) -> dict[str, Any]:
    """`{"loss": mean per response token, "loss_tokens", "rouge_l", "responses": [extracted], "generated":
    [raw], "runtime": seconds}` of `model` on `entries` (`generate_responses` with `generate_kwargs`). Every
    rank must call it: each takes a share (`PartialState.split_between_processes`); all get the result."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    start = time.perf_counter()
    state = PartialState()
    with state.split_between_processes(list(entries)) as local:
        total, count = response_loss(model, tokenizer, local, batch_size=batch_size, max_length=max_length)
        generated = generate_responses(model, tokenizer, local, batch_size=batch_size,
                                       progress=progress and state.is_main_process, **generate_kwargs)
    sums = gather_object([(total, count)])  # one pair per process, in rank order
    total, count = sum(t for t, _ in sums), sum(c for _, c in sums)
    if not count:
        logger.warning("No response tokens to compute a loss on (%d entries).", len(entries))
    generated = gather_object(generated)  # the shares concatenated in rank order: the entries' order
    responses = [item["response"] for item in generated]
    return {"loss": total / count if count else float("nan"), "loss_tokens": count, "responses": responses,
            "generated": [item["generated"] for item in generated],
            "rouge_l": rouge_l(responses, [entry["output"] for entry in entries]),
            "runtime": time.perf_counter() - start}

"""Evaluation of instruction-finetuned models (the book's chapter 7), used by `recipes/instruct.py`.

- `extract_response`: the response cut out of what a model generated.
- `generate_responses`: greedy responses, batched and left-padded, stopping at the tokenizer's eos
  or at "### Instruction", at most `max_new_tokens` new tokens (256 in the book).
- `response_loss`: the next-token loss over the response tokens only, summed over the tokens of all
  entries (kept: no library weighs the book's response loss by tokens across batches, so it does
  not depend on the batch size).
- `rouge_l`: mean ROUGE-L F-measure of responses against the reference outputs (offline).
- `evaluate_instruction_model`: all of the above for one model on one split, sharded over the
  processes of a torchrun / accelerate launch with accelerate's `split_between_processes`.

The book's LLM judge (Ollama) is `examples/judge.py`, run on the recipe's responses.json.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .data import ALPACA_HEADER, RESPONSE_HEADER, alpaca_prompt_completion, format_alpaca_prompt
from .sampling import context_length_of

logger = logging.getLogger(__name__)

__all__ = ["STOP_STRINGS", "extract_response", "generate_responses", "response_loss", "rouge_l",
           "evaluate_instruction_model"]

RESPONSE_MARKER = RESPONSE_HEADER.strip()  # "### Response:"
# Generation stops at these strings (and at the eos token); the response is cut before them.
STOP_STRINGS = ("### Instruction",)
_CUT_AT = ("### Instruction", "### Input", RESPONSE_MARKER, ALPACA_HEADER.split(".")[0], "<|endoftext|>")


def extract_response(generated: str, header_in_prompt: bool = True) -> str:
    """The response in `generated` (the new text only, without the prompt).

    A leading "### Response:" is dropped. With `header_in_prompt=False` (the book's prompt, which
    ends before the header, so the model writes it) the response is the text after the first
    "### Response:" wherever it is, as the book's `.replace("### Response:", "")` does. The
    response is then cut before the next section the model starts ("### Instruction",
    "### Input", another "### Response:", the Alpaca header or a literal "<|endoftext|>") and
    stripped of surrounding whitespace.
    """
    text = generated.lstrip()
    if text.startswith(RESPONSE_MARKER):
        text = text[len(RESPONSE_MARKER):]
    elif not header_in_prompt and RESPONSE_MARKER in text:
        text = text.split(RESPONSE_MARKER, 1)[1]
    cut = min([i for i in (text.find(marker) for marker in _CUT_AT) if i != -1], default=len(text))
    return text[:cut].strip()


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    entries: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    response_header: bool = True,
    stop_strings: Sequence[str] | None = STOP_STRINGS,
    progress: bool = False,
) -> list[dict[str, str]]:
    """Greedy responses to `entries`: `[{"generated": raw new text, "response": extracted}]`, in
    the order of `entries`.

    Prompts are grouped by length and left-padded (`tokenizer.pad`, which needs a pad token) in
    batches of `batch_size`. Prompts are kept whole and generation stops where the context is
    full: at most context - (longest prompt of the batch) new tokens (the book's `generate` slides
    its window instead, which `generate` with a KV cache cannot). A prompt that fills the context
    by itself is cut from the left, keeping room for min(max_new_tokens, context // 4) new tokens,
    with a warning naming the entry.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    context = context_length_of(model)
    encoded = [tokenizer(format_alpaca_prompt(entry, response_header))["input_ids"] for entry in entries]
    for i, ids in enumerate(encoded):
        if context is not None and len(ids) >= context:
            keep = context - min(max_new_tokens, max(1, context // 4))
            logger.warning("Entry %d: its prompt has %d tokens, the model's context %d; generating from its last "
                           "%d tokens (the start of the prompt is cut).", i, len(ids), context, keep)
            encoded[i] = ids[-keep:]
    order = sorted(range(len(entries)), key=lambda i: len(encoded[i]))
    stop = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
    results: list[dict[str, str] | None] = [None] * len(entries)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="Generating responses", unit="batch")
    was_training = model.training
    model.eval()
    try:
        for start in batches:
            index = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in index]}, padding_side="left", return_tensors="pt")
            longest = batch["input_ids"].shape[1]
            new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - longest)
            out = model.generate(
                **batch.to(model.device), max_new_tokens=new_tokens, do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **stop,
            )
            texts = tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
            for i, text in zip(index, texts):
                results[i] = {"generated": text, "response": extract_response(text, header_in_prompt=response_header)}
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def response_loss(
    model, tokenizer, entries: Sequence[Mapping[str, Any]], batch_size: int = 8, max_length: int | None = None
) -> tuple[float, int]:
    """(summed loss, number of target tokens) over the response tokens of `entries`.

    Each entry is tokenized as `SFTTrainer` tokenizes `alpaca_prompt_completion` (prompt + "\\n\\n###
    Response:\\n" + output + end-of-text, the prompt tokens masked whatever the training used),
    cut to `max_length` (default: the model's context) and padded by TRL's collator. Divide the two
    numbers for the mean loss per response token.
    """
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
    """Mean ROUGE-L F-measure (0..1) of `predictions` against `references` (offline metric
    `hf_gpt_scratch.training.metrics`, rouge_score's tokenization without stemming). NaN for no pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return float("nan")
    from .metrics import load_metric

    scores = load_metric("rouge").compute(
        predictions=list(predictions), references=list(references), rouge_types=["rougeL"]
    )
    return float(scores["rougeL"])


def evaluate_instruction_model(
    model,
    tokenizer,
    entries: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    response_header: bool = True,
    max_length: int | None = None,
    generate: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Response loss, greedy responses and ROUGE-L of `model` on `entries`.

    Returns `{"loss": mean loss per response token, "loss_tokens": their number, "rouge_l",
    "responses": [extracted response per entry], "generated": [raw new text per entry],
    "runtime": seconds}` (responses/rouge_l only with `generate`). Under several processes every
    rank must call this: each handles a contiguous share of the entries
    (`PartialState.split_between_processes`) and all ranks get the full result (`gather_object`).
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    start = time.perf_counter()
    state = PartialState()
    with state.split_between_processes(list(entries)) as local:
        total, count = response_loss(model, tokenizer, local, batch_size=batch_size, max_length=max_length)
        generated = (
            generate_responses(model, tokenizer, local, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               response_header=response_header, progress=progress and state.is_main_process)
            if generate and local else []
        )
    sums = gather_object([(total, count)])  # one pair per process, in rank order
    total, count = sum(t for t, _ in sums), sum(c for _, c in sums)
    result: dict[str, Any] = {"loss": total / count if count else float("nan"), "loss_tokens": count}
    if generate:
        generated = gather_object(generated)  # the shares concatenated in rank order: the entries' order
        result["responses"] = [item["response"] for item in generated]
        result["generated"] = [item["generated"] for item in generated]
        result["rouge_l"] = rouge_l(result["responses"], [entry["output"] for entry in entries])
    result["runtime"] = time.perf_counter() - start
    if not math.isfinite(result["loss"]):
        logger.warning("No response tokens to compute a loss on (%d entries).", len(entries))
    return result

"""Evaluation of instruction-finetuned models (the book's chapter 7), shared by `recipes/instruct.py`
and anything else that scores Alpaca-style responses.

- `build_prompt`, `extract_response`: the prompt a model answers, and the response cut out of
  what it generated (text after "### Response:", up to the next "### Instruction"/"### Input"
  section, the Alpaca header or an end-of-text token).
- `generate_responses`: greedy responses for a list of entries, batched and left-padded (the model
  counts positions over real tokens, so left padding does not shift them), stopping at the
  tokenizer's eos or at "### Instruction", at most `max_new_tokens` new tokens (256 in the book).
- `response_loss`: the mean next-token loss over the response tokens only (prompt masked, the
  appended end-of-text token counted), summed over tokens of all entries and divided once, so it
  does not depend on the batch size and is comparable before/after any tuning.
- `rouge_l`: mean ROUGE-L F-measure of responses against reference outputs (offline metric).
- `judge_prompt`, `query_judge`, `judge_responses`: the book's LLM-as-judge scoring (0-100) with an
  Ollama-compatible chat endpoint (`POST {url}/api/chat`); an unreachable judge gives a warning and
  no scores, never an exception.
- `evaluate_instruction_model`: all of the above for one model on one split, sharded over the
  processes of a torchrun / accelerate launch (each rank takes every world_size-th entry, results
  are gathered in the original order), or on one process.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .data import ALPACA_HEADER, InstructionCollator, format_alpaca_prompt, tokenize_instruction
from .sampling import context_length_of

logger = logging.getLogger(__name__)

__all__ = [
    "RESPONSE_HEADER",
    "RESPONSE_MARKER",
    "STOP_STRINGS",
    "build_prompt",
    "extract_response",
    "generate_responses",
    "response_loss",
    "rouge_l",
    "judge_endpoint",
    "judge_prompt",
    "query_judge",
    "parse_score",
    "judge_reachable",
    "judge_responses",
    "evaluate_instruction_model",
]

RESPONSE_MARKER = "### Response:"
RESPONSE_HEADER = "\n\n" + RESPONSE_MARKER + "\n"
# Generation stops at these strings (and at the eos token); the response is cut before them.
STOP_STRINGS = ("### Instruction",)
_CUT_AT = ("### Instruction", "### Input", RESPONSE_MARKER, ALPACA_HEADER.split(".")[0], "<|endoftext|>")


# --------------------------------------------------------------------------------------------
# Prompts and responses
# --------------------------------------------------------------------------------------------


def build_prompt(entry: Mapping[str, Any], response_header: bool = True) -> str:
    """The text the model continues: the book's `format_input(entry)`, followed by
    "\\n\\n### Response:\\n" when `response_header` (the model then answers right away; the book
    prompts without it and lets the model write the header itself)."""
    prompt = format_alpaca_prompt(entry)
    return prompt + RESPONSE_HEADER if response_header else prompt


def extract_response(generated: str, header_in_prompt: bool = True) -> str:
    """The response in `generated` (the new text only, without the prompt).

    A leading "### Response:" is dropped. With `header_in_prompt=False` (the book's prompt, which
    ends before the header, so the model writes it) the response is the text after the first
    "### Response:" wherever it is, as the book's `.replace("### Response:", "")` does. The
    response is then cut before the next section the model starts ("### Instruction",
    "### Input", another "### Response:", the Alpaca header "Below is an instruction that
    describes a task" or a literal "<|endoftext|>") and stripped of surrounding whitespace.
    """
    text = generated.lstrip()
    if text.startswith(RESPONSE_MARKER):
        text = text[len(RESPONSE_MARKER):]
    elif not header_in_prompt and RESPONSE_MARKER in text:
        text = text.split(RESPONSE_MARKER, 1)[1]
    cut = len(text)
    for marker in _CUT_AT:
        index = text.find(marker)
        if index != -1:
            cut = min(cut, index)
    return text[:cut].strip()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an eos token")


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


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

    Prompts are grouped by length and left-padded in batches of `batch_size`. Prompts are kept
    whole and generation stops where the context is full: at most context - (longest prompt of the
    batch) new tokens (the book's `generate` slides its window instead, which `generate` with a
    KV cache cannot). Only a prompt that fills the context by itself is cut from the left, keeping
    room for min(max_new_tokens, context // 4) new tokens.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    context = context_length_of(model)
    pad_id = _pad_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    device = _model_device(model)
    encoded = [_encode(tokenizer, build_prompt(entry, response_header)) for entry in entries]
    order = sorted(range(len(entries)), key=lambda i: len(encoded[i]))
    results: list[dict[str, str] | None] = [None] * len(entries)

    was_training = model.training
    model.eval()
    iterator = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="Generating responses", unit="batch")
    try:
        for start in iterator:
            index = order[start : start + batch_size]
            prompts = [encoded[i] for i in index]
            if context is not None and max(len(ids) for ids in prompts) >= context:
                # A prompt fills the context: keep its end, leaving room for some new tokens.
                keep = context - min(max_new_tokens, max(1, context // 4))
                prompts = [ids[-keep:] for ids in prompts]
            longest = max(len(ids) for ids in prompts)
            input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
            for row, ids in enumerate(prompts):
                if ids:
                    input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, longest - len(ids) :] = 1
            # Whole prompts, and as many new tokens as the context still holds.
            new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - longest)
            kwargs: dict[str, Any] = {}
            if stop_strings:
                kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                **kwargs,
            )
            texts = tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
            for i, text in zip(index, texts):
                results[i] = {"generated": text, "response": extract_response(text, header_in_prompt=response_header)}
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def response_loss(
    model,
    tokenizer,
    entries: Sequence[Mapping[str, Any]],
    batch_size: int = 8,
    max_length: int | None = None,
) -> tuple[float, int]:
    """(summed loss, number of target tokens) over the response tokens of `entries`.

    Each entry is prompt + "\\n\\n### Response:\\n" + output + end-of-text, as in training
    (`tokenize_instruction` + `InstructionCollator`), with the prompt tokens masked whatever the
    training used; `max_length` (default: the model's context) truncates each example. Divide
    the two numbers for the mean loss per response token.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length is None:
        max_length = context_length_of(model)
    collator = InstructionCollator(
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else _pad_id(tokenizer),
        mask_prompt=True,
        max_length=max_length,
    )
    features = [tokenize_instruction(entry, tokenizer) for entry in entries]
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(features), batch_size):
            batch = collator(features[start : start + batch_size])
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            targets = batch["labels"][:, 1:].to(device)
            logits = logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total, count


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0..1) of `predictions` against `references` (offline metric
    `hf_gpt_scratch.metrics`, rouge_score's tokenization without stemming). NaN for no pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return float("nan")
    from .metrics import load_metric

    scores = load_metric("rouge").compute(
        predictions=list(predictions), references=list(references), rouge_types=["rougeL"]
    )
    return float(scores["rougeL"])


# --------------------------------------------------------------------------------------------
# LLM judge (Ollama-compatible chat endpoint)
# --------------------------------------------------------------------------------------------


def judge_endpoint(url: str) -> str:
    """The chat URL for `url`: the server's base URL plus "/api/chat" (a URL that already ends
    with "/api/chat", as in the book's `query_model`, is kept)."""
    url = url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"judge url {url!r} is not an http(s) URL like http://localhost:11434")
    return url if parsed.path.endswith("/api/chat") else url + "/api/chat"


def judge_prompt(entry: Mapping[str, Any], response_key: str = "model_response") -> str:
    """The book's scoring prompt for one entry."""
    return (
        f"Given the input `{format_alpaca_prompt(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[response_key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def query_judge(prompt: str, url: str, model: str = "llama3", timeout: float = 120.0) -> str:
    """The judge's answer to `prompt`: `POST {url}/api/chat` with the book's deterministic
    options (seed 123, temperature 0, num_ctx 2048). Reads a streamed answer (one JSON object per
    line, Ollama's default) or a single JSON object; returns the concatenated message content.
    Raises OSError (URLError, timeouts) when the server cannot be reached, ValueError for an
    answer that is not Ollama's format."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
        "stream": False,
    }
    request = urllib.request.Request(
        judge_endpoint(url),
        data=json.dumps(payload).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read().decode("utf-8")
    content = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            message = json.loads(line)
            content.append(message["message"]["content"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"judge answer is not an Ollama chat response: {line[:200]!r} ({err})") from None
    return "".join(content)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_score(text: str) -> float | None:
    """The score in a judge's answer: the whole answer as a number (the book's `int(score)`), else
    the first number in it; None when there is none or it is outside 0..100."""
    text = text.strip()
    match = _NUMBER.fullmatch(text) or _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(0))
    return value if 0 <= value <= 100 else None


def judge_reachable(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "") when a TCP connection to the judge's host and port opens, else (False, why)."""
    try:
        parsed = urllib.parse.urlparse(judge_endpoint(url))
    except ValueError as err:
        return False, str(err)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True, ""
    except OSError as err:
        return False, f"cannot connect to {parsed.hostname}:{port} ({err})"


def judge_responses(
    entries: Sequence[Mapping[str, Any]],
    url: str,
    model: str = "llama3",
    response_key: str = "model_response",
    timeout: float = 120.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score each entry's `response_key` with the judge at `url` (0-100, the book's prompt).

    Returns `{"scores": [float | None per entry], "mean": mean of the valid scores (None if
    none), "n_scored", "n_failed" (entries without a score), "error": why judging stopped, or
    None}`. Never raises for an
    unreachable or misbehaving judge: an unreachable judge is checked first and gives a warning
    and no scores; a judge that stops answering mid-way keeps the scores so far; an answer without
    a score in 0..100 counts as failed (the book prints "Could not convert score").
    """
    scores: list[float | None] = [None] * len(entries)
    result: dict[str, Any] = {"scores": scores, "mean": None, "n_scored": 0, "n_failed": 0, "error": None}
    ok, why = judge_reachable(url)
    if not ok:
        result["error"] = f"judge at {url} is not reachable: {why}"
        result["n_failed"] = len(entries)
        logger.warning("Skipping the LLM judge: %s", result["error"])
        return result
    iterator = enumerate(entries)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(entries), desc="Scoring responses", unit="entry")
    for i, entry in iterator:
        try:
            answer = query_judge(judge_prompt(entry, response_key), url, model=model, timeout=timeout)
        except (OSError, ValueError, urllib.error.HTTPError) as err:
            result["error"] = f"judge at {url} failed on entry {i}: {err}"
            logger.warning("Stopping the LLM judge: %s", result["error"])
            break
        score = parse_score(answer)
        if score is None:
            logger.warning("Could not convert the judge's answer to a score for entry %d: %r", i, answer[:200])
        scores[i] = score
    valid = [s for s in scores if s is not None]
    result["n_scored"] = len(valid)
    result["n_failed"] = len(entries) - len(valid)
    result["mean"] = sum(valid) / len(valid) if valid else None
    return result


# --------------------------------------------------------------------------------------------
# One evaluation pass, optionally sharded over processes
# --------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


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
    rank must call this: each handles every world_size-th entry and all ranks get the full result.
    """
    start = time.perf_counter()
    rank, world = _world()
    local = list(range(rank, len(entries), world))
    local_entries = [entries[i] for i in local]
    total, count = response_loss(model, tokenizer, local_entries, batch_size=batch_size, max_length=max_length)
    generated = (
        generate_responses(
            model,
            tokenizer,
            local_entries,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            response_header=response_header,
            progress=progress and rank == 0,
        )
        if generate and local_entries
        else []
    )
    shards = _gather({"index": local, "total": total, "count": count, "generated": generated}, world)
    total = sum(s["total"] for s in shards)
    count = sum(s["count"] for s in shards)
    result: dict[str, Any] = {
        "loss": total / count if count else float("nan"),
        "loss_tokens": count,
    }
    if generate:
        ordered: list[dict[str, str] | None] = [None] * len(entries)
        for shard in shards:
            for i, item in zip(shard["index"], shard["generated"]):
                ordered[i] = item
        result["responses"] = [item["response"] for item in ordered]  # type: ignore[index]
        result["generated"] = [item["generated"] for item in ordered]  # type: ignore[index]
        result["rouge_l"] = rouge_l(result["responses"], [entry["output"] for entry in entries])
    result["runtime"] = time.perf_counter() - start
    if not math.isfinite(result["loss"]):
        logger.warning("No response tokens to compute a loss on (%d entries).", len(entries))
    return result

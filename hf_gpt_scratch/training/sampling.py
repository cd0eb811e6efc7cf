"""Text generation for the reports and the generate recipe, with the book's conventions (temperature
0 = greedy, top-k); prompt and new tokens must fit the model's context."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import transformers

logger = logging.getLogger(__name__)


@dataclass
class SamplingArguments:
    """How a recipe generates text: temperature 0 is greedy decoding (the book's convention), > 0 samples."""

    max_new_tokens: int = field(default=50, metadata={"help": "Tokens to generate per prompt."})
    temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature; 0 = greedy decoding (the book's default)."}
    )
    top_k: int | None = field(default=None, metadata={"help": "Sample only among the k most likely tokens."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling: smallest set with this probability."})
    repetition_penalty: float | None = field(default=None, metadata={"help": "Penalty > 1 for repeated tokens."})
    do_sample: bool | None = field(
        default=None, metadata={"help": "Sample instead of greedy decoding (default: sample iff --temperature > 0)."}
    )

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}.")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"--top_k must be positive, got {self.top_k}.")

    def generation_kwargs(self) -> dict[str, Any]:
        """`generate` keyword arguments: greedy, or sampling at `temperature` (1 when 0 and --do_sample)
        with top_k 0 unless given (no hidden top-50 filter, generate's default)."""
        do_sample = self.temperature > 0 if self.do_sample is None else self.do_sample
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": do_sample,
                  "repetition_penalty": self.repetition_penalty}
        if do_sample:
            kwargs.update(temperature=self.temperature or 1.0, top_k=self.top_k or 0, top_p=self.top_p)
        return {key: value for key, value in kwargs.items() if value is not None}


def context_length_of(model) -> int | None:
    """`config.max_position_embeddings` (our context_length, GPT-2's n_positions)."""
    return getattr(model.config, "max_position_embeddings", None)


def length_within_context(value: int | None, model, flag: str) -> int:
    """A sequence-length flag's value: `value`, else the model's context (else 1024). ValueError
    naming `flag` when it exceeds the context (the model has no positions past it)."""
    context = context_length_of(model)
    length = value or context or 1024
    if context is not None and length > context:
        raise ValueError(f"{flag} {length} exceeds the model's context_length {context}.")
    return length


@torch.no_grad()
def generate_batched(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int = 1,
                     progress: bool = False, **gen_kwargs) -> list[str]:
    """The new text (special tokens skipped) of `model.generate(**gen_kwargs)` after each prompt (token ids,
    shorter than the context), in order; batches grouped by length, left-padded (needs a pad token); at most
    context - longest prompt new tokens (the book's `generate` slides its window: no KV cache can)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    context = context_length_of(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="Generating", unit="batch")
    was_training = model.training
    model.eval()
    try:
        for start in batches:
            index = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in index]}, padding_side="left",
                                  return_tensors="pt")
            longest = batch["input_ids"].shape[1]
            new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - longest)
            out = model.generate(**batch.to(model.device), max_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, tokenizer=tokenizer, **gen_kwargs)
            for i, text in zip(index, tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)):
                texts[i] = text
    finally:
        model.train(was_training)
    return texts


def generate_text(model, tokenizer, prompt: str, seed: int | None = None, max_new_tokens: int = 50,
                  **gen_kwargs) -> str:
    """Continue `prompt`; returns the new text only (`generate_batched`). A prompt that fills the
    context keeps its last half; max_new_tokens shrinks to what is left; both with a warning."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    context = context_length_of(model)
    if context is not None and len(ids) >= context:
        keep = max(1, context // 2)  # room left to generate
        logger.warning("Prompt is %d tokens: keeping the last %d (the context is %d).", len(ids), keep,
                       context)
        ids = ids[-keep:]
    if context is not None and len(ids) + max_new_tokens > context:
        logger.warning("Generating %d tokens only: the prompt and the new tokens must fit the context of %d.",
                       context - len(ids), context)
    if seed is not None:
        transformers.set_seed(seed)
    return generate_batched(model, tokenizer, [ids], max_new_tokens, **gen_kwargs)[0]


def generate_samples(model, tokenizer, prompts: Sequence[str], seed: int | None = None, **gen_kwargs) -> list[dict[str, str]]:
    """`[{"prompt": p, "completion": text}]` for each prompt (see `generate_text`)."""
    samples = []
    for i, prompt in enumerate(prompts):
        text = generate_text(model, tokenizer, prompt, seed=None if seed is None else seed + i, **gen_kwargs)
        samples.append({"prompt": prompt, "completion": text})
    return samples


"""Instruction finetuning set-up (the book's chapter 7), used by `recipes/instruct.py`: the recipe's
arguments, the book's 85/10/5 splits of an Alpaca-format file, their tokenized features, and the
PEFT LoRA wrapping of a causal LM. Evaluation lives in `instruction.py`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .arguments import DataArguments, LoraArguments, ModelArguments
from .data import load_instruction_data, split_instruction_data, tokenize_instruction

logger = logging.getLogger(__name__)

@dataclass
class InstructDataArguments(DataArguments):
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Evaluate (loss, generation) on at most this many test entries."}
    )
    mask_prompt: bool = field(
        default=False,
        metadata={"help": "Leave the instruction (prompt) tokens out of the training loss (the book's exercise 7.2)."},
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate each example (prompt + response + <|endoftext|>) to this many tokens; "
                  "default: the model's context_length."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_test_samples is not None and self.max_test_samples <= 0:
            raise ValueError(f"--max_test_samples must be a positive integer, got {self.max_test_samples}.")
        if self.max_seq_length is not None and self.max_seq_length < 2:
            raise ValueError(f"--max_seq_length must be at least 2, got {self.max_seq_length}.")
        if self.dataset_name:
            raise ValueError("--dataset_name is not supported here: pass --train_file (a JSON list or JSONL "
                             "file of {instruction, input, output} entries).")
        if self.validation_file:
            raise ValueError("--validation_file is not supported: the splits come from --train_file "
                             "(85% train / 10% test / 5% validation, as the book).")


@dataclass
class InstructLoraArguments(LoraArguments):
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (PEFT); false: finetune all weights."})


@dataclass
class InstructEvalArguments:
    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated response (the book: 256)."})
    response_header_in_prompt: bool = field(
        default=True,
        metadata={"help": "End the prompt with '### Response:' (false: the book's prompt, the model writes the "
                  "header itself)."},
    )
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the untuned model on the test split too."})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generate call (default: --per_device_eval_batch_size)."}
    )

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")
        if self.generation_batch_size is not None and self.generation_batch_size <= 0:
            raise ValueError(f"--generation_batch_size must be positive, got {self.generation_batch_size}.")


def load_splits(data_args: InstructDataArguments) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, test) entries, validated (a malformed file fails here, before any model
    is loaded), split as the book and cut to the --max_*_samples."""
    entries = load_instruction_data(data_args.train_file, data_args.data_dir)
    train, validation, test = split_instruction_data(entries)
    if data_args.max_train_samples is not None:
        train = train[: data_args.max_train_samples]
    if data_args.max_eval_samples is not None:
        validation = validation[: data_args.max_eval_samples]
    if data_args.max_test_samples is not None:
        test = test[: data_args.max_test_samples]
    if not train:
        raise ValueError(f"No training entries: {len(entries)} entries give an empty 85% train split.")
    return train, validation, test


def instruction_features(entries: list[dict], tokenizer) -> datasets.Dataset:
    """`tokenize_instruction` of each entry (input_ids, prompt_length) as a Dataset."""
    return datasets.Dataset.from_list([tokenize_instruction(entry, tokenizer) for entry in entries])


def adapter_base_path(model_args: ModelArguments) -> str | None:
    """What the adapter's config names as its base: the absolute folder when it is local."""
    path = model_args.model_name_or_path
    if path and Path(path).exists():
        return str(Path(path).resolve())
    return path


def untie_safe_targets(model, targets: str | list[str]) -> str | list[str]:
    """`targets` without the output head when it shares its weight with the token embedding: a
    merged LoRA update of a tied head would change the input embedding too, so the merged model
    would no longer match the adapter."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if isinstance(targets, str) or head is None or embedding is None or head.weight is not embedding.weight:
        return targets
    head_names = [name for name, module in model.named_modules() if module is head]
    dropped = [t for t in targets if any(name == t or name.endswith("." + t) for name in head_names)]
    if dropped:
        logger.warning("Not adapting %s: the output head is tied to the token embedding.", ", ".join(dropped))
    kept = [t for t in targets if t not in dropped]
    if not kept:
        raise ValueError(f"--lora_target_modules {','.join(targets)}: nothing left to adapt (the output head is tied).")
    return kept


def wrap_with_lora(model, lora_args: LoraArguments, model_args: ModelArguments):
    from peft import get_peft_model

    config = lora_args.peft_config(
        task_type="CAUSAL_LM",
        target_modules=untie_safe_targets(model, lora_args.target_modules()),
        base_model_name_or_path=adapter_base_path(model_args),
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise ValueError(f"--lora_target_modules {lora_args.lora_target_modules!r}: {err} (module names: {names})") from None


def response_records(entries: list[dict], responses: list[str]) -> list[dict]:
    """The entries with their "model_response", the book's responses.json (what `examples/judge.py` scores)."""
    return [dict(entry, model_response=response) for entry, response in zip(entries, responses)]

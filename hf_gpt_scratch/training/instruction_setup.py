"""Instruction finetuning set-up (the book's chapter 7), used by `recipes/instruct.py`: the recipe's
arguments, the book's 85/10/5 splits of an Alpaca-format file as TRL prompt/completion datasets,
and the responses.json records. Evaluation lives in `instruction.py`."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

from .arguments import DataArguments
from .data import alpaca_prompt_completion, load_instruction_data, split_instruction_data


@dataclass
class InstructDataArguments(DataArguments):
    """Data flags of the chapter-7 recipes (instruct, preference): one Alpaca-format file, split as the book."""

    max_test_samples: int | None = field(
        default=None, metadata={"help": "Evaluate (and generate) on at most this many test entries."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_test_samples is not None and self.max_test_samples <= 0:
            raise ValueError(f"--max_test_samples must be a positive integer, got {self.max_test_samples}.")
        if self.dataset_name:
            raise ValueError("--dataset_name is not supported here: pass --train_file (a JSON list or JSONL "
                             "file of Alpaca-format entries).")
        if self.validation_file:
            raise ValueError("--validation_file is not supported: the splits come from --train_file "
                             "(85% train / 10% test / 5% validation, as the book).")
        if self.validation_split_percentage != 10.0:
            raise ValueError("--validation_split_percentage does not apply: the splits are the book's (85% train / "
                             "10% test / 5% validation); --max_train_samples / --max_eval_samples / --max_test_samples cut them.")
        if self.block_size is not None or self.preprocessing_num_workers is not None:
            raise ValueError("--block_size and --preprocessing_num_workers do not apply here: sequences are cut at "
                             "--max_length (TRL's flag).")

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
class GenerationEvalArguments:
    """The flags of the chapter-7 recipes' greedy test responses."""

    max_new_tokens: int = field(default=256, metadata={"help": "Longest generated response (the book: 256)."})
    response_header_in_prompt: bool = field(
        default=True,
        metadata={"help": "End the prompt with '### Response:' (false: the book's prompt, the model writes the "
                  "header itself)."},
    )

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens must be positive, got {self.max_new_tokens}.")


@dataclass
class InstructEvalArguments(GenerationEvalArguments):
    eval_before: bool = field(default=True, metadata={"help": "Evaluate the untuned model on the test split too."})
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Prompts per generate call (default: --per_device_eval_batch_size)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.generation_batch_size is not None and self.generation_batch_size <= 0:
            raise ValueError(f"--generation_batch_size must be positive, got {self.generation_batch_size}.")


def sft_dataset(entries: list[dict], eos_token: str) -> datasets.Dataset:
    """The entries as a TRL prompt/completion Dataset (`alpaca_prompt_completion`)."""
    return datasets.Dataset.from_list([alpaca_prompt_completion(entry, eos_token) for entry in entries])


def response_records(entries: list[dict], responses: list[str]) -> list[dict]:
    """The entries with their "model_response", the book's responses.json (what `examples/judge.py` scores)."""
    return [dict(entry, model_response=response) for entry, response in zip(entries, responses)]

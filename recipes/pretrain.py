#!/usr/bin/env python
"""Next-token pretraining of the book's GPT with the transformers Trainer (chapter 5).
Usage, data, outputs and examples: docs/recipes.md."""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers import Trainer, TrainingArguments, default_data_collator
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import get_model_param_count

from hf_gpt_scratch.training.arguments import DatasetArguments, ModelArguments, parse_recipe_args, setup_logging
from hf_gpt_scratch.training.callbacks import default_callbacks, evaluate_once, train_without_evaluation
from hf_gpt_scratch.training.data import book_windows, fetch_book_file, load_text, load_text_records, pack_into_blocks, split_text
from hf_gpt_scratch.training.hub import finish_run, prepare_push
from hf_gpt_scratch.training.loading import load_causal_lm, load_tokenizer_for, save_final_model, train_model
from hf_gpt_scratch.training.reporting import (
    log_history_to_curves, logged, save_metrics, save_plots, write_json,
)
from hf_gpt_scratch.training.sampling import SamplingArguments, context_length_of, generate_samples, length_within_context

logger = logging.getLogger(__name__)

PRESETS = Path(__file__).parent / "presets" / "pretrain"


@dataclass
class PretrainDataArguments(DatasetArguments):
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per training sequence; default: the model's context_length."})
    text_column_name: str = field(
        default="text", metadata={"help": "Column with the text in --train_file (json/jsonl) or --dataset_name."}
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "The book's sliding windows (GPTDatasetV1): --block_size tokens every --stride "
                  "tokens, each with --block_size targets (all ids in memory). Default: run_clm's blocks."},
    )
    eval_train_samples: int = field(
        default=0, metadata={"help": "Also evaluate on this many training blocks (the book's train loss)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._positive("block_size", "stride")
        if self.eval_train_samples < 0:
            raise ValueError(f"--eval_train_samples must be >= 0, got {self.eval_train_samples}.")
        if self.validation_file and not self.train_file:
            raise ValueError("--validation_file needs --train_file.")


@dataclass
class ReportArguments(SamplingArguments):
    sample_prompts: list[str] = field(
        default_factory=lambda: ["Every effort moves you"], metadata={"help": "Prompts to continue after training."}
    )


# The recipe's own defaults (on top of TrainingArguments'); presets and explicit flags win.
RECIPE_DEFAULTS = {
    "output_dir": "runs/pretrain",
    "eval_strategy": "steps",
    "eval_on_start": True,  # the loss before training: the first point of the curves
    "logging_steps": 10,
    "include_num_input_tokens_seen": True,  # tokens seen: the x axis of the book's loss plot
    "save_strategy": "no",
    "ddp_find_unused_parameters": False,  # every parameter takes part in the loss
}


def _pieces(text: str, size: int = 1 << 16) -> list[str]:
    """`text` cut after line ends into pieces of about `size` characters, so that tokenization can run
    in several processes (a short text stays one piece: the book's exact ids)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def load_raw_splits(data_args: PretrainDataArguments) -> datasets.DatasetDict:
    """Train (and validation) text in the column --text_column_name."""
    col, percent = data_args.text_column_name, data_args.validation_split_percentage
    suffix = Path(data_args.train_file).suffix.lower() if data_args.train_file else ".txt"
    if data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        if "train" not in raw:
            raise ValueError(f"dataset {data_args.dataset_name} has no train split (splits: {list(raw)}).")
    elif suffix in (".json", ".jsonl"):
        files = {"train": data_args.train_file, "validation": data_args.validation_file}
        raw = {}
        for name, path in files.items():
            if path:  # read by our loader: its errors name the file, line or row and field
                raw[name] = datasets.Dataset.from_dict({col: load_text_records(path, col)})
    elif suffix in (".txt", ".text", ".md"):
        text = load_text(data_args.train_file or fetch_book_file("the-verdict.txt", data_args.data_dir))
        texts = {"train": text}
        if data_args.validation_file:
            texts["validation"] = load_text(data_args.validation_file)
        elif percent > 0:  # the book's split
            texts = dict(zip(("train", "validation"), split_text(text, 1.0 - percent / 100.0)))
        return datasets.DatasetDict({k: datasets.Dataset.from_dict({col: _pieces(v)}) for k, v in texts.items()})
    else:
        raise ValueError(f"--train_file {data_args.train_file}: use a .txt, .json or .jsonl file.")
    splits = {name: raw[name] for name in ("train", "validation") if name in raw}
    if "validation" not in splits and percent > 0:  # hold out the last rows, as the book holds out the end
        n_val = max(1, round(len(raw["train"]) * percent / 100.0))
        held = raw["train"].train_test_split(test_size=n_val, shuffle=False)
        splits = {"train": held["train"], "validation": held["test"]}
    for name, ds in splits.items():
        if col not in ds.column_names:
            raise ValueError(
                f"{name} data has no column {col!r} (columns: {ds.column_names}); choose one with --text_column_name."
            )
    return datasets.DatasetDict(splits)


def build_datasets(raw: datasets.DatasetDict, tokenizer, data_args: PretrainDataArguments, block_size: int, training_args):
    """{split: (blocks, tokens in the text)}: packed blocks, or the book's windows with --stride."""
    col, workers = data_args.text_column_name, data_args.preprocessing_num_workers
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}

    def tokenize(batch):
        return {"input_ids": tokenizer(batch[col], add_special_tokens=False, verbose=False)["input_ids"]}

    out = {}
    with training_args.main_process_first(desc="tokenize and pack"):
        for name, ds in raw.items():
            ids = ds.map(tokenize, batched=True, num_proc=workers, remove_columns=ds.column_names, desc=f"Tokenizing {name}")
            n_tokens = sum(len(row) for row in ids["input_ids"])
            if data_args.stride is not None:
                blocks = book_windows([t for row in ids["input_ids"] for t in row], block_size, data_args.stride)
            else:
                blocks = ids.map(pack_into_blocks, batched=True, fn_kwargs={"block_size": block_size}, num_proc=workers,
                                 desc=f"Packing {name} into blocks of {block_size}")
            if len(blocks) == 0:
                raise ValueError(
                    f"The {name} text has {n_tokens} tokens: not enough for one block of {block_size} "
                    f"(+1 with --stride). Use a smaller --block_size or more text."
                )
            if limits[name] is not None:
                blocks = blocks.select(range(min(len(blocks), limits[name])))
            out[name] = (blocks, n_tokens)
    return out


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, report_args, training_args, preset = parse_recipe_args(
        (ModelArguments, PretrainDataArguments, ReportArguments, TrainingArguments),
        presets=PRESETS, defaults=RECIPE_DEFAULTS, args=args, description=__doc__.split("\n")[0],
    )
    setup_logging(training_args)
    hub_target = prepare_push(training_args)  # --push_to_hub: our push, not the Trainer's; fails fast
    transformers.set_seed(training_args.seed)

    tokenizer = load_tokenizer_for(model_args)
    model = load_causal_lm(model_args, tokenizer)
    block_size = length_within_context(data_args.block_size, model, "--block_size")
    splits = build_datasets(load_raw_splits(data_args), tokenizer, data_args, block_size, training_args)
    (train_ds, train_text_tokens), (eval_ds, val_text_tokens) = splits["train"], splits.get("validation", (None, 0))
    if "shift_labels" in train_ds.column_names:
        # The Trainer would drop the book's exact targets (forward() has no such parameter).
        training_args.remove_unused_columns = False

    eval_dataset = eval_ds
    if eval_ds is None:
        train_without_evaluation(training_args, "No validation data (--validation_split_percentage 0)")
    elif data_args.eval_train_samples > 0:
        n = min(data_args.eval_train_samples, len(train_ds))
        eval_dataset = {"validation": eval_ds, "train": train_ds.select(range(n))}

    logger.info("preset %s, model %s, context %s, %d-token blocks, train/validation text %d/%d tokens, %s",
                preset or "-", model_args.model_name_or_path or "from scratch", context_length_of(model),
                block_size, train_text_tokens, val_text_tokens, training_args.device)

    trainer = Trainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_dataset,
                      processing_class=tokenizer, data_collator=default_data_collator,
                      callbacks=default_callbacks())
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces
    save_final_model(trainer)  # model + tokenizer, safetensors, no pickle (the main process writes)
    trainer.save_state()

    history = trainer.state.log_history
    train = {
        "train_blocks": len(train_ds),
        "block_size": block_size,
        "num_parameters": get_model_param_count(model),  # (num_parameters() miscounts under ZeRO-3)
        "preset": preset,
    }
    evaluation = {}
    if eval_ds is not None:
        evaluation = evaluate_once(trainer)
        eval_name = "eval_validation_loss" if isinstance(eval_dataset, dict) else "eval_loss"
        try:
            perplexity = math.exp(evaluation[eval_name])
        except OverflowError:
            perplexity = math.inf
        evaluation.update(eval_loss=evaluation[eval_name], perplexity=perplexity,
                          initial_eval_loss=logged(history, eval_name, 0), eval_blocks=len(eval_ds))
    results = save_metrics(trainer, {"train": train, "eval": evaluation}, train_result)

    # Sharded weights (DeepSpeed ZeRO-3, FSDP): every process takes part in each forward pass.
    if trainer.is_world_process_zero() or trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled():
        samples = generate_samples(
            trainer.model, tokenizer, report_args.sample_prompts, seed=training_args.seed, **report_args.generation_kwargs()
        )
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        save_plots(log_history_to_curves(history), output_dir, {"loss": "loss.png"}, preset or None)
        write_json(output_dir / "samples.json", samples)
        for sample in samples:
            print(f"--- {sample['prompt']!r}\n{sample['prompt']}{sample['completion']}", flush=True)
        card = {**results, "samples": samples}
        finish_run(output_dir, card, "pretrain", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main()

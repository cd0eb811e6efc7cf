#!/usr/bin/env python
"""Next-token pretraining of the book's GPT with the transformers Trainer (chapter 5).

From scratch (a `GPTScratchConfig`, shaped with --config_overrides) or continued from a checkpoint
(--model_name_or_path: ours, any causal LM, or a stock OpenAI GPT-2 folder converted on the fly).
Text comes from --train_file (.txt, or .json/.jsonl with a text column), --dataset_name (a hub
dataset), or by default the book's the-verdict.txt. It is tokenized, packed into --block_size
blocks (or the book's sliding windows with --stride), trained, evaluated (loss, perplexity), and
reported: loss curves against tokens seen (loss.png), a few sampled continuations, results.json,
and the model with its tokenizer (safetensors) in --output_dir.

Examples:

    # the book's chapter-5 run (GPT-2 124M shape, context 256, 10 epochs on the-verdict.txt)
    python recipes/pretrain.py --preset book_ch5 --output_dir runs/book_ch5

    # a tiny model for a quick look
    python recipes/pretrain.py --config_overrides n_layers=2,emb_dim=64,n_heads=2,context_length=128 \\
        --block_size 128 --max_steps 50 --output_dir runs/tiny

    # continue from OpenAI's GPT-2 (a folder saved by GPT2LMHeadModel.save_pretrained)
    python recipes/pretrain.py --model_name_or_path path/to/gpt2 --train_file my.txt --output_dir runs/ft

    # several processes (CPU: gloo is chosen automatically)
    torchrun --nproc_per_node 2 recipes/pretrain.py ...
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers import Trainer, TrainingArguments, default_data_collator

import hf_gpt_scratch  # noqa: F401  (registers the Auto classes)
from hf_gpt_scratch.arguments import (
    DataArguments,
    ModelArguments,
    is_main_process,
    parse_recipe_args,
    setup_logging,
)
from hf_gpt_scratch.callbacks import TokensSeenCallback, default_callbacks, evaluate_once, find_callback
from hf_gpt_scratch.data import (
    book_windows,
    fetch_book_file,
    load_text,
    load_text_records,
    pack_into_blocks,
    split_text,
)
from hf_gpt_scratch.hub import finish_run, prepare_push
from hf_gpt_scratch.loading import (
    count_parameters,
    load_causal_lm,
    load_tokenizer_for,
    save_final_model,
    train_model,
    weights_are_sharded,
)
from hf_gpt_scratch.reporting import (
    final_metric,
    first_metric,
    log_history_to_curves,
    perplexity,
    print_table,
    write_results,
)
from hf_gpt_scratch.sampling import SamplingArguments, context_length_of, generate_samples

logger = logging.getLogger(__name__)

# Rows of a .txt file are cut at line ends into pieces of about this many characters, so that
# tokenization can run in several processes; a short text stays one piece (the book's exact ids).
TEXT_PIECE_CHARS = 1 << 16


@dataclass
class PretrainDataArguments(DataArguments):
    text_column_name: str = field(
        default="text", metadata={"help": "Column with the text in --train_file (json/jsonl) or --dataset_name."}
    )
    stride: int | None = field(
        default=None,
        metadata={
            "help": "Use the book's sliding windows (GPTDatasetV1): windows of --block_size tokens every --stride "
            "tokens, each with its --block_size next-token targets. Default: run_clm packing into "
            "non-overlapping blocks (block_size - 1 targets each). Keeps all token ids in memory."
        },
    )
    eval_train_samples: int = field(
        default=0,
        metadata={
            "help": "Also evaluate on this many training blocks at each evaluation (model in eval mode, as the "
            "book's train loss); logged as eval_train_loss."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"--stride must be a positive integer, got {self.stride}.")
        if self.eval_train_samples < 0:
            raise ValueError(f"--eval_train_samples must be >= 0, got {self.eval_train_samples}.")
        if self.dataset_name and self.train_file:
            raise ValueError("Pass either --dataset_name or --train_file, not both.")
        if self.validation_file and not (self.train_file or self.dataset_name):
            raise ValueError("--validation_file needs --train_file.")


DEFAULT_PROMPTS = ["Every effort moves you"]

# The recipe's own defaults (on top of TrainingArguments'); explicit flags win.
RECIPE_DEFAULTS = {
    "output_dir": "runs/pretrain",
    "eval_strategy": "steps",
    "eval_on_start": True,  # the loss before training: the first point of the curves
    "logging_steps": 10,
    "include_num_input_tokens_seen": True,  # "all" (a str default would go through the bool parser)
    "save_strategy": "no",
    "report_to": "none",
    "ddp_find_unused_parameters": False,  # every parameter takes part in the loss
}

PRESETS = {
    # Chapter 5 of the book: `train_model_simple` on the-verdict.txt with GPT_CONFIG_124M but a
    # context of 256, AdamW(lr=4e-4, weight_decay=0.1), 10 epochs, batch 2, 90/10 split by
    # characters, windows of 256 with stride 256, no schedule, no warmup, no clipping, seed 123,
    # evaluation every 5 steps on 5 batches. The book ends at train loss ~0.57, val loss ~6.37.
    "book_ch5": {
        "tokenizer_name": "gpt2",
        "config_overrides": "context_length=256,emb_dim=768,n_heads=12,n_layers=12,drop_rate=0.1,"
        "qkv_bias=false,tie_word_embeddings=false",
        "init_weights": "torch",  # the book's GPTModel keeps PyTorch's default initialisation
        "block_size": 256,
        "stride": 256,
        "validation_split_percentage": 10.0,
        "eval_train_samples": 10,
        "num_train_epochs": 10,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 4e-4,
        "weight_decay": 0.1,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 0.0,
        "seed": 123,
        "eval_strategy": "steps",
        "eval_steps": 5,
        "logging_steps": 5,
        "dataloader_drop_last": True,
        "output_dir": "runs/book_ch5",
        "sample_prompts": DEFAULT_PROMPTS,
        "max_new_tokens": 25,
    },
}


def _pieces(text: str, size: int = TEXT_PIECE_CHARS) -> list[str]:
    """`text` cut after line ends into pieces of about `size` characters (one piece if short)."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _text_splits(text: str, percent: float, validation_text: str | None) -> dict[str, list[str]]:
    if validation_text is not None:
        return {"train": _pieces(text), "validation": _pieces(validation_text)}
    if percent <= 0:
        return {"train": _pieces(text)}
    train_text, val_text = split_text(text, train_ratio=1.0 - percent / 100.0)  # the book's split
    return {"train": _pieces(train_text), "validation": _pieces(val_text)}


def _tail_split(ds: datasets.Dataset, percent: float) -> dict[str, datasets.Dataset]:
    """Hold out the last `percent` of the rows (the book holds out the end of its text)."""
    if percent <= 0:
        return {"train": ds}
    n_val = max(1, int(round(len(ds) * percent / 100.0)))
    if n_val >= len(ds):
        raise ValueError(f"{len(ds)} rows are too few to hold out {percent}% for validation.")
    return {"train": ds.select(range(len(ds) - n_val)), "validation": ds.select(range(len(ds) - n_val, len(ds)))}


def load_raw_splits(data_args: PretrainDataArguments) -> datasets.DatasetDict:
    """Train (and validation) text as a DatasetDict with one column `text`."""
    col = data_args.text_column_name
    percent = data_args.validation_split_percentage
    if data_args.dataset_name:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        if "train" not in raw:
            raise ValueError(f"dataset {data_args.dataset_name} has no train split (splits: {list(raw)}).")
        splits = {"train": raw["train"]}
        if "validation" in raw:
            splits["validation"] = raw["validation"]
        else:
            splits = _tail_split(raw["train"], percent)
    elif data_args.train_file and Path(data_args.train_file).suffix.lower() not in (".txt", ".text", ".md"):
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        suffix = Path(data_args.train_file).suffix.lower()
        if suffix not in (".json", ".jsonl"):
            raise ValueError(f"--train_file {data_args.train_file}: use a .txt, .json or .jsonl file.")
        for path in files.values():  # clear errors (file, line/row, field) before datasets parses them
            load_text_records(path, col)
        raw = datasets.load_dataset("json", data_files=files)
        splits = dict(raw) if "validation" in raw else _tail_split(raw["train"], percent)
    else:
        path = data_args.train_file or fetch_book_file("the-verdict.txt", data_args.data_dir)
        text = load_text(path)
        val_text = load_text(data_args.validation_file) if data_args.validation_file else None
        pieces = _text_splits(text, percent, val_text)
        return datasets.DatasetDict({name: datasets.Dataset.from_dict({col: rows}) for name, rows in pieces.items()})

    for name, ds in splits.items():
        if col not in ds.column_names:
            raise ValueError(
                f"{name} data has no column {col!r} (columns: {ds.column_names}); choose one with --text_column_name."
            )
    return datasets.DatasetDict(splits)


def build_datasets(raw: datasets.DatasetDict, tokenizer, data_args: PretrainDataArguments, block_size: int, training_args):
    """Tokenized splits: packed blocks, or the book's windows when --stride is set."""
    col = data_args.text_column_name

    def tokenize(batch):
        return {"input_ids": tokenizer(batch[col], add_special_tokens=False, verbose=False)["input_ids"]}

    out = {}
    with training_args.main_process_first(desc="tokenize and pack"):
        for name, ds in raw.items():
            tokenized = ds.map(
                tokenize,
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=ds.column_names,
                desc=f"Tokenizing {name}",
            )
            n_tokens = sum(len(ids) for ids in tokenized["input_ids"])
            if data_args.stride is not None:
                ids = [t for row in tokenized["input_ids"] for t in row]
                blocks = book_windows(ids, context_length=block_size, stride=data_args.stride)
            else:
                blocks = tokenized.map(
                    pack_into_blocks,
                    batched=True,
                    fn_kwargs={"block_size": block_size},
                    num_proc=data_args.preprocessing_num_workers,
                    desc=f"Packing {name} into blocks of {block_size}",
                )
            if len(blocks) == 0:
                raise ValueError(
                    f"The {name} text has {n_tokens} tokens: not enough for one block of {block_size} "
                    f"(+1 with --stride). Use a smaller --block_size or more text."
                )
            out[name] = (blocks, n_tokens)
    train, train_tokens = out["train"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    validation, val_tokens = out.get("validation", (None, 0))
    if validation is not None and data_args.max_eval_samples is not None:
        validation = validation.select(range(min(len(validation), data_args.max_eval_samples)))
    return train, validation, train_tokens, val_tokens


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, sampling_args, training_args, preset = parse_recipe_args(
        (ModelArguments, PretrainDataArguments, SamplingArguments, TrainingArguments),
        presets=PRESETS,
        defaults=RECIPE_DEFAULTS,
        args=args,
        description=__doc__.split("\n")[0],
    )
    setup_logging(training_args)
    hub_target = prepare_push(training_args)  # --push_to_hub: our push, not the Trainer's; fails fast
    transformers.set_seed(training_args.seed)

    tokenizer = load_tokenizer_for(model_args)
    model = load_causal_lm(model_args, tokenizer)
    context = context_length_of(model)
    block_size = data_args.block_size or context or 1024
    if context is not None and block_size > context:
        raise ValueError(f"--block_size {block_size} exceeds the model's context_length {context}.")

    raw = load_raw_splits(data_args)
    train_ds, eval_ds, train_text_tokens, val_text_tokens = build_datasets(raw, tokenizer, data_args, block_size, training_args)
    if "shift_labels" in train_ds.column_names:
        # The Trainer would drop the book's exact targets (forward() has no such parameter).
        training_args.remove_unused_columns = False

    eval_dataset = eval_ds
    if eval_ds is None:
        logger.warning("No validation data (--validation_split_percentage 0): training without evaluation.")
        training_args.eval_strategy = transformers.trainer_utils.IntervalStrategy.NO
        training_args.eval_on_start = False
        training_args.do_eval = False
    elif data_args.eval_train_samples > 0:
        n = min(data_args.eval_train_samples, len(train_ds))
        eval_dataset = {"validation": eval_ds, "train": train_ds.select(range(n))}

    world = training_args.world_size
    tokens_per_step = block_size * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world
    print_table(
        {
            "preset": preset or "-",
            "model": model_args.model_name_or_path or "from scratch",
            "parameters": count_parameters(model),
            "context_length": context,
            "block_size": block_size,
            "train_tokens_in_text": train_text_tokens,
            "val_tokens_in_text": val_text_tokens,
            "train_blocks": len(train_ds),
            "eval_blocks": len(eval_ds) if eval_ds is not None else 0,
            "processes": world,
            "device": str(training_args.device),
            "tokens_per_step": tokens_per_step,
        },
        title="pretrain",
    )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=default_callbacks(),
    )
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces
    save_final_model(trainer)  # model + tokenizer, safetensors, no pickle (the main process writes)
    trainer.save_state()

    metrics = evaluate_once(trainer) if eval_ds is not None else {}
    curves = log_history_to_curves(trainer.state.log_history)
    speed = find_callback(trainer, TokensSeenCallback)
    eval_name = "eval_validation_loss" if isinstance(eval_dataset, dict) else "eval_loss"
    eval_loss = metrics.get(eval_name, float("nan"))
    results = {
        "preset": preset,
        "train_loss": final_metric(curves, "train_loss", train_result.metrics.get("train_loss", float("nan"))),
        "train_loss_average": train_result.metrics.get("train_loss"),
        "eval_loss": eval_loss,
        "perplexity": perplexity(eval_loss),
        "initial_eval_loss": first_metric(curves, eval_name),
        "eval_train_loss": metrics.get("eval_train_loss"),
        "train_tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_second": speed.tokens_per_second if speed else None,
        "seconds_per_step": speed.seconds_per_step if speed else None,
        "train_runtime": train_result.metrics.get("train_runtime"),  # wall clock, evaluations included
        "train_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "num_parameters": count_parameters(model),
        "block_size": block_size,
        "train_blocks": len(train_ds),
        "eval_blocks": len(eval_ds) if eval_ds is not None else 0,
        "world_size": world,
    }
    if eval_ds is None:
        for key in ("eval_loss", "perplexity", "initial_eval_loss"):
            results.pop(key)
    results = {k: v for k, v in results.items() if v is not None}

    # Sharded weights (DeepSpeed ZeRO-3, FSDP): every process takes part in each forward pass.
    if is_main_process() or weights_are_sharded(trainer):
        prompts = sampling_args.sample_prompts if sampling_args.sample_prompts is not None else DEFAULT_PROMPTS
        samples = generate_samples(
            trainer.model, tokenizer, prompts, seed=training_args.seed, **sampling_args.generation_kwargs()
        )
    if is_main_process():
        from hf_gpt_scratch.plots import plot_losses

        try:
            plot_losses(curves, Path(training_args.output_dir) / "loss.png", title=preset or None)
        except ValueError as err:  # nothing logged (e.g. no eval and fewer steps than logging_steps)
            logger.warning("No loss plot: %s", err)
        results["samples"] = samples
        write_results(training_args.output_dir, results)
        print_table({k: v for k, v in results.items() if k != "samples"}, title="results")
        for sample in samples:
            print(f"--- {sample['prompt']!r}\n{sample['prompt']}{sample['completion']}", flush=True)
        finish_run(training_args.output_dir, results, "pretrain", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

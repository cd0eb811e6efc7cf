#!/usr/bin/env python
"""Instruction finetuning of the book's GPT with TRL's SFTTrainer and PEFT LoRA (chapter 7): docs/instruct.md.

    python recipes/instruct.py --model_name_or_path runs/pretrain --output_dir runs/instruct
    python recipes/instruct.py --preset book_ch7 --model_name_or_path path/to/gpt2-medium  # the book's run
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_pt_utils import get_model_param_count
from trl import SFTConfig, SFTTrainer

from hf_gpt_scratch.training.arguments import ModelArguments, TrlLoraArguments, parse_lora_recipe_args
from hf_gpt_scratch.training.callbacks import default_callbacks, evaluate_once, train_without_evaluation
from hf_gpt_scratch.training.faults import check_lengths
from hf_gpt_scratch.training.hub import finish_run
from hf_gpt_scratch.training.instruction import (
    InstructDataArguments, InstructEvalArguments, evaluate_instruction_model, response_records, sft_dataset,
)
from hf_gpt_scratch.training.loading import (
    load_causal_lm, save_and_reload, start_tuning, train_model, unsharded_loading,
)
from hf_gpt_scratch.training.reporting import (
    log_history_to_curves, logged, save_metrics, save_plots, write_json,
)
from hf_gpt_scratch.training.sampling import context_length_of

logger = logging.getLogger(__name__)

LORA_LEARNING_RATE = 5e-4  # a LoRA update starts at zero and is low-rank: at the book's rate it barely moves
FULL_LEARNING_RATE = 5e-5  # the book's
RECIPE_DEFAULTS = {  # per-device batch 8 and no warmup are SFTConfig's defaults and the book's
    "output_dir": "runs/instruct",
    "num_train_epochs": 2,  # the book
    "weight_decay": 0.1,  # the book
    "lr_scheduler_type": "constant",  # the book: no schedule
    "seed": 123,  # the book
    "eval_strategy": "steps",
    "eval_steps": 20,
    "eval_on_start": True,  # validation loss before training: the first point of the curves
    "logging_steps": 5,  # the book's eval_freq
    "include_num_input_tokens_seen": True,
    "save_strategy": "no",
    "max_length": None,  # the model's context
    "bf16": False,  # the book trains in float32 (TRL's default is bf16)
    "activation_checkpointing": False,  # the book (TRL turns it on; its old name gradient_checkpointing warns)
}
PRESETS = Path(__file__).parent / "presets" / "instruct"


@dataclass
class InstructConfig(SFTConfig):
    """SFTConfig whose `--completion_only_loss` works as a bare flag (SFTConfig's `bool | None` needs a value)."""

    completion_only_loss: bool = field(default=False, metadata={
        "help": "Mask the prompt in the loss (the book's exercise 7.2). Default: the book's full-sequence loss."})


def parse_args(args: list[str] | None = None) -> tuple:
    types = (ModelArguments, InstructDataArguments, TrlLoraArguments, InstructEvalArguments, InstructConfig)
    return parse_lora_recipe_args(types, PRESETS, RECIPE_DEFAULTS, args, (LORA_LEARNING_RATE, FULL_LEARNING_RATE),
                                  description=__doc__.split("\n")[0])


def main(args: list[str] | None = None) -> dict:
    started = time.perf_counter()
    model_args, data_args, lora_args, eval_args, training_args, preset = parse_args(args)
    hub_target, entries, tokenizer, model = start_tuning(model_args, data_args, training_args)
    train_entries, val_entries, test_entries = entries
    total_parameters = get_model_param_count(model)
    eval_kwargs = dict(max_new_tokens=eval_args.max_new_tokens, max_length=training_args.max_length,
                       batch_size=training_args.per_device_eval_batch_size,
                       response_header=eval_args.response_header_in_prompt, progress=not training_args.disable_tqdm)

    train_ds = sft_dataset(train_entries, tokenizer.eos_token)
    val_ds = sft_dataset(val_entries, tokenizer.eos_token) if val_entries else None
    # over-long entries: truncated with a counted warning; a prompt that fills the context: refused
    source = data_args.train_file or "instruction-data.json"
    check_lengths({"train": train_ds, "validation": val_ds}, tokenizer, training_args.max_length, source,
                  ("completion",))
    peft_config = lora_args.checked_peft_config(model) if lora_args.use_lora else None
    finetuning = "lora" if lora_args.use_lora else "full"
    logger.info("preset %s, model %s (%d parameters, context %s), %s finetuning, device %s", preset or "-",
                model_args.model_name_or_path or "from scratch", total_parameters, context_length_of(model),
                finetuning, training_args.device)

    before = after = None
    if eval_args.eval_before and test_entries:
        logger.info("Evaluating the untuned model on %d test entries.", len(test_entries))
        untuned = model
        if is_deepspeed_zero3_enabled():  # partitioned at load: every process evaluates a full copy
            with unsharded_loading(training_args):
                untuned = load_causal_lm(model_args, tokenizer).to(training_args.device)
        before = evaluate_instruction_model(untuned, tokenizer, test_entries, **eval_kwargs)
        del untuned
        logger.info("Before tuning: test response loss %.4f, ROUGE-L %.4f", before["loss"], before["rouge_l"])

    if val_ds is None:
        train_without_evaluation(training_args, "No validation entries")
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=default_callbacks())
    trainable = get_model_param_count(trainer.model, trainable_only=True)
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces
    evaluation = evaluate_once(trainer) if val_ds is not None else {}  # reuses the last step's, if logged
    trainer.save_state()  # trainer_state.json (log history) in output_dir, main process only

    # The Trainer saves what it trained (gathered under FSDP or ZeRO-3); every process then evaluates
    # a full copy reloaded from it, generating for its own share of the test entries.
    tuned = save_and_reload(trainer, model_args, tokenizer, lora_args.use_lora)
    if test_entries:
        logger.info("Evaluating the tuned model on %d test entries.", len(test_entries))
        after = evaluate_instruction_model(tuned, tokenizer, test_entries, **eval_kwargs)

    history = trainer.state.log_history
    if evaluation:
        evaluation.update(initial_eval_loss=logged(history, "eval_loss", 0), n_validation=len(val_entries))
    test = {}
    for when, evaluated in (("before", before), ("after", after)):
        if evaluated:
            test.update({f"test_loss_{when}": evaluated["loss"], f"rouge_l_{when}": evaluated["rouge_l"],
                         f"test_runtime_{when}": evaluated["runtime"]})
    if after:
        test.update(test_loss_tokens=after["loss_tokens"], n_test=len(test_entries),
                    max_new_tokens=eval_args.max_new_tokens,
                    response_header_in_prompt=eval_args.response_header_in_prompt)
    train = {
        "n_train": len(train_entries),
        "trainable_parameters": trainable,
        "total_parameters": total_parameters,
        "finetuning": finetuning,  # the other settings: training_args.json, adapter/adapter_config.json
        "model": model_args.model_name_or_path,
        "preset": preset,
        "runtime": time.perf_counter() - started,  # the whole run, evaluations and generations included
    }
    results = save_metrics(trainer, {"train": train, "eval": evaluation, "test": test}, train_result)
    if not trainer.is_world_process_zero():
        return results

    output_dir = Path(training_args.output_dir)
    for name, evaluated in (("responses.json", after), ("responses_before.json", before)):
        if evaluated:
            write_json(output_dir / name, response_records(test_entries, evaluated["responses"]))
    title = f"Instruction finetuning ({finetuning})"
    save_plots(log_history_to_curves(history), output_dir, {"loss": "loss.png"}, title)
    if after:
        for entry, response in list(zip(test_entries, after["responses"]))[:3]:
            print(f"--- {entry['instruction']!r}\n  reference: {entry['output']!r}\n"
                  f"  model:     {response!r}", flush=True)
    finish_run(output_dir, results, "instruct", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main()

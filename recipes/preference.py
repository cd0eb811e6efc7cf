#!/usr/bin/env python
"""Preference tuning (DPO) of an instruct model with TRL's DPOTrainer (chapter 7's bonus): docs/preference.md.

    python recipes/preference.py --model_name_or_path runs/instruct --output_dir runs/preference
    python recipes/preference.py --preset book_dpo --model_name_or_path path/to/gpt2-medium-sft  # the book's
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers.trainer_pt_utils import get_model_param_count
from trl import DPOConfig, DPOTrainer

from hf_gpt_scratch.training.arguments import ModelArguments, TrlLoraArguments, parse_lora_recipe_args
from hf_gpt_scratch.training.callbacks import default_callbacks, train_without_evaluation
from hf_gpt_scratch.training.faults import check_lengths
from hf_gpt_scratch.training.hub import finish_run
from hf_gpt_scratch.training.instruction import generate_responses
from hf_gpt_scratch.training.loading import load_causal_lm, save_and_reload, start_tuning, train_model
from hf_gpt_scratch.training.preference import (
    PreferenceDataArguments, PreferenceEvalArguments, evaluate_preferences, preference_curves, preference_dataset,
)
from hf_gpt_scratch.training.reporting import logged, save_metrics, save_plots, write_json
from hf_gpt_scratch.training.sampling import context_length_of

logger = logging.getLogger(__name__)

LORA_LEARNING_RATE = 5e-5
FULL_LEARNING_RATE = 5e-6  # the book's
RECIPE_DEFAULTS = {  # per-device batch 8 and no warmup are DPOConfig's defaults and the book's
    "output_dir": "runs/preference",
    "num_train_epochs": 1,  # the book: DPO collapses when trained longer
    "weight_decay": 0.01,  # the book
    "lr_scheduler_type": "constant",  # the book: no schedule
    "seed": 123,  # the book
    "eval_strategy": "steps",
    "eval_steps": 5,  # the book's eval_freq
    "eval_on_start": True,  # the first point of the curves
    "logging_steps": 5,
    "include_num_input_tokens_seen": True,
    "bf16": False,  # TRL's default is bf16 autocast, even on CPU; the book is float32
    "gradient_checkpointing": False,  # TRL's default; small models do not need it
    "max_length": None,  # resolved to the model's context_length
    "save_strategy": "no",
}
PRESETS = Path(__file__).parent / "presets" / "preference"


def parse_args(args: list[str] | None = None) -> tuple:
    types = (ModelArguments, PreferenceDataArguments, TrlLoraArguments, PreferenceEvalArguments, DPOConfig)
    return parse_lora_recipe_args(types, PRESETS, RECIPE_DEFAULTS, args, (LORA_LEARNING_RATE, FULL_LEARNING_RATE),
                                  description=__doc__.split("\n")[0])


def main(args: list[str] | None = None) -> dict:
    started = time.perf_counter()
    model_args, data_args, lora_args, eval_args, training_args, preset = parse_args(args)
    hub_target, entries, tokenizer, model = start_tuning(model_args, data_args, training_args)
    train_entries, val_entries, test_entries = entries
    total_parameters = get_model_param_count(model)
    train_ds = preference_dataset(train_entries)
    val_ds = preference_dataset(val_entries) if val_entries else None
    test_ds = preference_dataset(test_entries) if test_entries else None
    # over-long pairs: truncated with a counted warning; a prompt filling --max_length: refused (TRL drops it)
    check_lengths({"train": train_ds, "validation": val_ds, "test": test_ds}, tokenizer,
                  training_args.max_length, data_args.train_file or "instruction-data-with-preference.json",
                  completions=("chosen", "rejected"))
    samples = test_entries[: eval_args.num_samples]
    gen_kwargs = dict(max_new_tokens=eval_args.max_new_tokens, batch_size=training_args.per_device_eval_batch_size,
                      response_header=eval_args.response_header_in_prompt)
    # the reference model is the starting model, frozen: it answers before training
    reference_responses = [r["response"] for r in generate_responses(model, tokenizer, samples, **gen_kwargs)]

    peft_config = ref_model = None
    if lora_args.use_lora:  # TRL wraps the model; the reference is the base with the adapter disabled
        peft_config = lora_args.checked_peft_config(model)  # refuses the output head before TRL would
    else:  # a frozen copy, loaded as the policy was (TRL's own copy would reload config._name_or_path)
        ref_model = load_causal_lm(model_args, tokenizer).to(training_args.device)
        ref_model.eval().requires_grad_(False)
    if val_ds is None:
        train_without_evaluation(training_args, "No validation entries")
    finetuning = "lora" if lora_args.use_lora else "full"
    logger.info("preset %s, model %s (%d parameters, context %s), %s tuning, beta %s, device %s",
                preset or "-", model_args.model_name_or_path or "from scratch", total_parameters,
                context_length_of(model), finetuning, training_args.beta, training_args.device)

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=train_ds,
                         eval_dataset=val_ds, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=default_callbacks())
    trainable = get_model_param_count(trainer.model, trainable_only=True)
    splits = {"validation": val_ds, "test": test_ds}
    before = evaluate_preferences(trainer, splits) if eval_args.eval_before else {}
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces
    after = evaluate_preferences(trainer, splits)
    trainer.save_state()  # trainer_state.json (log history) in output_dir, main process only

    # what was saved, reloaded (a full copy on every process): the generations below come from the files
    tuned = save_and_reload(trainer, model_args, tokenizer, lora_args.use_lora)
    tuned_responses = [r["response"] for r in generate_responses(tuned, tokenizer, samples, **gen_kwargs)]

    history = trainer.state.log_history
    train = {
        "train_reward_margin": logged(history, "rewards/margins"),
        "n_train": len(train_entries),
        "trainable_parameters": trainable,
        "total_parameters": total_parameters,
        "finetuning": finetuning,  # the other settings: training_args.json, adapter/adapter_config.json
        "model": model_args.model_name_or_path,
        "preset": preset,
        "runtime": time.perf_counter() - started,  # the whole run, evaluations and generations included
    }
    evaluation = {"n_validation": len(val_entries)} if val_entries else {}
    test = {"n_test": len(test_entries), "max_new_tokens": eval_args.max_new_tokens} if test_entries else {}
    for split, prefix, metrics in (("validation", "eval", evaluation), ("test", "test", test)):
        for when, values in (("before", before), ("after", after)):
            metrics.update({f"{prefix}_{key}_{when}": value for key, value in values.get(split, {}).items()})
    results = save_metrics(trainer, {"train": train, "eval": evaluation, "test": test}, train_result)
    if not trainer.is_world_process_zero():
        return results

    output_dir = Path(training_args.output_dir)
    responses = [dict(entry, reference_response=ref, tuned_response=new)
                 for entry, ref, new in zip(samples, reference_responses, tuned_responses)]
    write_json(output_dir / "responses.json", responses)
    plots = {"loss": "loss.png", "reward_margin": "reward_margins.png"}
    save_plots(preference_curves(history), output_dir, plots, f"DPO ({finetuning})")
    for r in responses:
        print(f"--- {r['instruction']!r}{' / ' + repr(r['input']) if r.get('input') else ''}\n"
              f"  chosen:    {r['chosen']!r}\n  reference: {r['reference_response']!r}\n  tuned:     {r['tuned_response']!r}",
              flush=True)
    finish_run(output_dir, results, "preference", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main()

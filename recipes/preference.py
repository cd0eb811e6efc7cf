#!/usr/bin/env python
"""Preference tuning (DPO) of an instruct model with TRL's DPOTrainer (chapter 7's bonus): docs/preference.md.

    python recipes/preference.py --model_name_or_path runs/instruct --output_dir runs/preference
    python recipes/preference.py --preset book_dpo --model_name_or_path path/to/gpt2-medium-sft  # the book's
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM
from trl import DPOConfig, DPOTrainer

from hf_gpt_scratch.training.arguments import ModelArguments, TrlLoraArguments, parse_lora_recipe_args, setup_logging
from hf_gpt_scratch.training.callbacks import default_callbacks
from hf_gpt_scratch.training.faults import check_lengths, save_pretrained_to
from hf_gpt_scratch.training.hub import finish_run, prepare_push
from hf_gpt_scratch.training.instruction import generate_responses
from hf_gpt_scratch.training.loading import (
    load_causal_lm, load_tokenizer_for, save_final_model, train_model,
)
from hf_gpt_scratch.training.preference import (
    PreferenceDataArguments, PreferenceEvalArguments, evaluate_preferences, preference_curves, preference_dataset,
)
from hf_gpt_scratch.training.reporting import logged, print_table, write_json, write_results
from hf_gpt_scratch.training.sampling import context_length_of, length_within_context

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
METRICS = (("loss", "DPO loss"), ("reward_margin", "reward margin"), ("reward_accuracy", "reward accuracy"))


def parse_args(args: list[str] | None = None) -> tuple:
    types = (ModelArguments, PreferenceDataArguments, TrlLoraArguments, PreferenceEvalArguments, DPOConfig)
    return parse_lora_recipe_args(types, PRESETS, RECIPE_DEFAULTS, args, (LORA_LEARNING_RATE, FULL_LEARNING_RATE),
                                  description=__doc__.split("\n")[0])


def main(args: list[str] | None = None) -> dict:
    started = time.perf_counter()
    model_args, data_args, lora_args, eval_args, training_args, preset = parse_args(args)
    setup_logging(training_args)
    hub_target = prepare_push(training_args)  # --push_to_hub: our push, not the Trainer's; fails fast
    transformers.set_seed(training_args.seed)
    train_entries, val_entries, test_entries = data_args.load_splits()  # fails fast on a bad file

    tokenizer = load_tokenizer_for(model_args)
    model = load_causal_lm(model_args, tokenizer)
    training_args.max_length = length_within_context(training_args.max_length, model, "--max_length")
    total_parameters = transformers.trainer_pt_utils.get_model_param_count(model)
    device = training_args.device
    model.to(device)
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
        ref_model = load_causal_lm(model_args, tokenizer).to(device).eval().requires_grad_(False)
    if val_ds is None:
        logger.warning("No validation entries: training without evaluation.")
        training_args.eval_strategy = transformers.trainer_utils.IntervalStrategy.NO
        training_args.eval_on_start = False
        training_args.do_eval = False
    print_table({
        "preset": preset or "-",
        "model": model_args.model_name_or_path or "from scratch",
        "parameters": total_parameters,
        "context_length": context_length_of(model),
        "tuning": "LoRA" if lora_args.use_lora else "full",
        "beta": training_args.beta,
        "loss_type": ", ".join(training_args.loss_type),
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "train / validation / test": f"{len(train_entries)} / {len(val_entries)} / {len(test_entries)}",
        "processes": training_args.world_size,
        "device": str(device),
    }, title="preference (DPO)")

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=train_ds,
                         eval_dataset=val_ds, processing_class=tokenizer, peft_config=peft_config,
                         callbacks=default_callbacks())
    trainable, _ = (trainer.model.get_nb_trainable_parameters() if lora_args.use_lora
                    else (trainer.model.num_parameters(only_trainable=True), None))
    splits = {"validation": val_ds, "test": test_ds}
    before = evaluate_preferences(trainer, splits) if eval_args.eval_before else {}
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces
    after = evaluate_preferences(trainer, splits)
    trainer.save_state()  # trainer_state.json (log history) in output_dir, main process only

    output_dir = Path(training_args.output_dir)
    trainer.model.config.use_cache = True  # the Trainer turns the cache off for training
    save_final_model(trainer, str(output_dir / "adapter") if lora_args.use_lora else None)
    trainer.accelerator.wait_for_everyone()
    if lora_args.use_lora:  # the merged model at the top of output_dir (loads without peft)
        base = load_causal_lm(model_args, tokenizer)
        tuned = PeftModel.from_pretrained(base, output_dir / "adapter").merge_and_unload()
        if trainer.is_world_process_zero():
            save_pretrained_to(output_dir, tuned, tokenizer)
    else:  # what was saved, reloaded: the generations below come from the files
        tuned = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=model_args.trust_remote_code)
    tuned.to(device).eval()
    tuned_responses = [r["response"] for r in generate_responses(tuned, tokenizer, samples, **gen_kwargs)]

    history = trainer.state.log_history
    results: dict = {
        "preset": preset,
        "model": model_args.model_name_or_path,
        "finetuning": "lora" if lora_args.use_lora else "full",
        "beta": training_args.beta,
        "loss_type": ", ".join(training_args.loss_type),
    }
    for split, prefix in (("validation", "val"), ("test", "test")):
        for when, values in (("before", before), ("after", after)):
            for key, value in values.get(split, {}).items():
                results[f"{prefix}_{key}_{when}"] = value
    results.update({
        "train_loss": (logged(history, "loss") or [train_result.metrics.get("train_loss")])[-1],
        "train_loss_mean": train_result.metrics.get("train_loss"),
        "train_reward_margin": (logged(history, "rewards/margins") or [None])[-1],
        "trainable_parameters": trainable,
        "total_parameters": total_parameters,
        "trainable_percent": 100.0 * trainable / total_parameters if total_parameters else None,
        "learning_rate": training_args.learning_rate,
        "epochs": trainer.state.epoch,
        "train_steps": trainer.state.global_step,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_second": (logged(history, "train_tokens_per_second") or [None])[-1],
        "train_runtime": train_result.metrics.get("train_runtime"),
        "max_length": training_args.max_length,
        "n_train": len(train_entries),
        "n_validation": len(val_entries),
        "n_test": len(test_entries),
        "max_new_tokens": eval_args.max_new_tokens,
        "world_size": training_args.world_size,
    })
    if lora_args.use_lora:
        results.update(lora_r=lora_args.lora_r, lora_alpha=lora_args.lora_alpha, lora_dropout=lora_args.lora_dropout,
                       lora_target_modules=lora_args.target_modules(), lora_modules_to_save=lora_args.lora_modules_to_save)
    results["runtime"] = time.perf_counter() - started
    results = {k: v for k, v in results.items() if v is not None}
    if not trainer.is_world_process_zero():
        return results

    from hf_gpt_scratch.training.plots import plot_losses

    responses = [dict(entry, reference_response=ref, tuned_response=new)
                 for entry, ref, new in zip(samples, reference_responses, tuned_responses)]
    write_json(output_dir / "responses.json", responses)
    curves = preference_curves(history)
    for metric, name in (("loss", "loss.png"), ("reward_margin", "reward_margins.png")):
        try:
            plot_losses(curves, output_dir / name, metric=metric, title=f"DPO ({results['finetuning']})")
        except ValueError as err:  # nothing logged (e.g. fewer steps than logging_steps and no eval)
            logger.warning("No %s plot: %s", metric, err)
    write_results(output_dir, results)
    print_table(results, title="results")
    rows = {}
    for prefix, split in (("val", "validation"), ("test", "test")):
        for key, label in METRICS:
            b, a = results.get(f"{prefix}_{key}_before"), results.get(f"{prefix}_{key}_after")
            if a is not None:
                rows[f"{split} {label}"] = (f"{b:.4f}" if b is not None else "   -  ") + f"   {a:.4f}"
    print_table({"": "before   after", **rows}, title="DPO: before and after tuning")
    for r in responses:
        print(f"--- {r['instruction']!r}{' / ' + repr(r['input']) if r.get('input') else ''}\n"
              f"  chosen:    {r['chosen']!r}\n  reference: {r['reference_response']!r}\n  tuned:     {r['tuned_response']!r}",
              flush=True)
    finish_run(output_dir, results, "preference", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env python
"""Spam classification with the book's GPT and the transformers Trainer (chapter 6).
Usage, data, what trains, outputs and examples: docs/recipes.md."""

import logging
import time
from pathlib import Path

import transformers
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_pt_utils import get_model_param_count

from hf_gpt_scratch.training.arguments import LoraArguments, ModelArguments, parse_recipe_args, setup_logging
from hf_gpt_scratch.training.callbacks import default_callbacks, train_without_evaluation
from hf_gpt_scratch.training.classification import (
    ClassificationArguments, ClassifyDataArguments, build_compute_metrics, load_classification_splits,
    load_sequence_classifier, set_trainable, tfidf_baseline, tokenize_splits,
)
from hf_gpt_scratch.training.faults import check_lengths, save_pretrained_to
from hf_gpt_scratch.training.hub import finish_run, prepare_push
from hf_gpt_scratch.training.loading import load_tokenizer_for, save_final_model, train_model
from hf_gpt_scratch.training.reporting import log_history_to_curves, save_metrics, save_plots
from hf_gpt_scratch.training.sampling import context_length_of

logger = logging.getLogger(__name__)

# The book's `train_classifier_simple`. (It also drops the last incomplete training batch; the
# Trainer's dataloader_drop_last would drop evaluation examples too, so it stays off.)
RECIPE_DEFAULTS = {
    "output_dir": "runs/classify",
    "learning_rate": 5e-5,
    "weight_decay": 0.1,
    "num_train_epochs": 5,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "lr_scheduler_type": "constant",
    "seed": 123,
    "eval_strategy": "epoch",
    "logging_steps": 10,
    "include_num_input_tokens_seen": True,
    "save_strategy": "no",
}

PRESETS = Path(__file__).parent / "presets" / "classify"  # book_ch6.yaml, demo.yaml


def main(args: list[str] | None = None) -> dict:
    started = time.perf_counter()
    model_args, data_args, cls_args, lora_args, training_args, preset = parse_recipe_args(
        (ModelArguments, ClassifyDataArguments, ClassificationArguments, LoraArguments, TrainingArguments),
        presets=PRESETS, defaults=RECIPE_DEFAULTS, args=args, description=__doc__.split("\n")[0],
    )
    setup_logging(training_args)
    if cls_args.trainable != "lora" and lora_args != LoraArguments():
        raise ValueError(f"--lora_* flags only apply to --trainable lora, not {cls_args.trainable!r}.")

    raw, label_names = load_classification_splits(data_args)  # a bad file fails before any model is loaded
    hub_target = prepare_push(training_args)  # --push_to_hub: our push, not the Trainer's; fails fast
    tokenizer = load_tokenizer_for(model_args)
    transformers.set_seed(training_args.seed)  # the new head's initialisation
    model = load_sequence_classifier(model_args, tokenizer, label_names)
    with training_args.main_process_first(desc="tokenize"):
        encoded, max_seq_length = tokenize_splits(
            raw, tokenizer, data_args.max_seq_length, context_length_of(model), data_args.append_eos,
            data_args.preprocessing_num_workers,
        )
    # texts longer than max_seq_length are truncated (the book's choice): counted in a warning per split
    source = data_args.train_file or data_args.dataset_name or "the SMS data"
    check_lengths(raw, tokenizer, max_seq_length - int(data_args.append_eos), source)
    model = set_trainable(model, cls_args.trainable, lora_args)
    trainable, total = get_model_param_count(model, trainable_only=True), get_model_param_count(model)

    validation, test = encoded.get("validation"), encoded.get("test")
    eval_dataset = validation
    if validation is None:
        train_without_evaluation(training_args, "No validation split")
    elif data_args.eval_train_samples > 0:
        n = min(data_args.eval_train_samples, len(encoded["train"]))
        eval_dataset = {"validation": validation, "train": encoded["train"].select(range(n))}
    logger.info("preset %s, model %s, classes %s, max_seq_length %d, %s trainable (%d of %d parameters), %s",
                preset or "-", model_args.model_name_or_path or "random init", ", ".join(label_names),
                max_seq_length, cls_args.trainable, trainable, total, training_args.device)

    trainer = Trainer(
        model=model, args=training_args, train_dataset=encoded["train"], eval_dataset=eval_dataset,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=build_compute_metrics(len(label_names)), callbacks=default_callbacks(),
    )
    train_result = train_model(trainer)  # checks the checkpoint it resumes, or clears the run it replaces

    evaluation, test_metrics = {}, {}
    if validation is not None:
        evaluation = {**trainer.evaluate(eval_dataset=validation), "eval_examples": len(validation)}
    if test is not None:
        prediction = trainer.predict(test, metric_key_prefix="test")
        test_metrics = {**prediction.metrics, "test_examples": len(test)}

    out_dir = Path(training_args.output_dir)
    if cls_args.trainable == "lora":
        # The adapter on its own, then the merged classifier (loads without peft).
        if trainer.is_world_process_zero():
            save_pretrained_to(out_dir / "adapter", trainer.model)
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            save_pretrained_to(out_dir, merged, tokenizer)
    else:
        save_final_model(trainer)  # model + tokenizer, safetensors, no pickle (the main process writes)

    if trainer.is_world_process_zero():
        from hf_gpt_scratch.training.plots import plot_confusion_matrix

        if cls_args.tfidf_baseline:
            baseline = tfidf_baseline(raw, len(label_names), seed=data_args.split_seed)
            for split, name, metrics in (("validation", "eval", evaluation), ("test", "test", test_metrics)):
                metrics.update({f"baseline_tfidf_{name}_{k}": v for k, v in baseline.get(split, {}).items()})
        curves = log_history_to_curves(trainer.state.log_history)
        save_plots(curves, out_dir, {"loss": "loss.png", "accuracy": "accuracy.png"}, preset or None)
        if test is not None:  # the counts and the names of their rows and columns, beside the test metrics
            counts = plot_confusion_matrix(test["label"], prediction.predictions.argmax(-1), label_names,
                                           out_dir / "confusion_matrix.png", title="test")
            test_metrics.update(test_confusion_matrix=counts.tolist(), label_names=list(label_names))
    train = {
        "train_examples": len(encoded["train"]),
        "trainable": cls_args.trainable,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "max_seq_length": max_seq_length,
        "preset": preset,
        "runtime": time.perf_counter() - started,  # the whole run, evaluations and plots included
    }
    results = save_metrics(trainer, {"train": train, "eval": evaluation, "test": test_metrics}, train_result)
    if trainer.is_world_process_zero():
        finish_run(out_dir, results, "classify", training_args, model_args, data_args, hub_target)
    return results


if __name__ == "__main__":
    main()
